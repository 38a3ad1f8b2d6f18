//! Cron expressions: parsing does not panic; an accepted one parses again
//! from its text to the same schedule, and each firing it computes is later
//! than asked and falls in a minute the schedule contains.
#![no_main]

use isola_proto::cron::Schedule;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
  let Some((&seed, text)) = data.split_first() else {
    return;
  };
  let Ok(text) = std::str::from_utf8(text) else {
    return;
  };
  let Ok(schedule) = Schedule::parse(text) else {
    return;
  };
  let again = Schedule::parse(schedule.as_str()).expect("an accepted schedule parses again");
  assert!(again == schedule);
  // From an instant picked by the input, within ±~270 years of 2024.
  let from = 1_704_067_200_000_i64 + (i64::from(seed) - 128) * 67_000_000_000;
  let mut t = from;
  for _ in 0..4 {
    let Some(next) = schedule.next_after(t) else {
      break;
    };
    assert!(next > t, "{text:?}: next_after({t}) = {next}");
    assert!(
      schedule.contains(next),
      "{text:?}: fires at {next} outside its minutes"
    );
    t = next;
  }
  let _ = schedule.default_cpu();
});
