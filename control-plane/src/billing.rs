//! Pay-per-use invoices: a price sheet applied to the exact usage records,
//! in decimal arithmetic (no floats touch money).
//!
//! Per worker and line item (requests, CPU time, egress, KV reads, writes,
//! deletes and lists, queue operations) an invoice shows quantity, unit
//! price and amount; the account's monthly allowance is one
//! credit line per item. Each day's amount consumes the allowance in day
//! order, so the month's total is exactly the sum of its days. Nothing is
//! charged for a worker that did not run: there are no fixed fees.

use std::collections::BTreeMap;

use rust_decimal::Decimal;
use serde::Deserialize;
use serde::Serialize;

/// Prices and allowances, from `control.toml`'s `[billing]`. Every field is
/// optional; the defaults are 0 (nothing costs anything) and `USD`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PriceSheet {
  /// ISO 4217 code shown on invoices. Default: `USD`.
  pub currency: Option<String>,
  /// Price of a million requests (any invocation: fetch, cron, queue, RPC).
  pub per_million_requests: Decimal,
  /// Price of a million CPU milliseconds.
  pub per_million_cpu_ms: Decimal,
  /// Price of a GB (10⁹ bytes) of response bytes.
  pub per_gb_egress: Decimal,
  /// Requests included each month, per account.
  pub included_requests: u64,
  /// CPU milliseconds included each month, per account.
  pub included_cpu_ms: u64,
  /// Egress GB included each month, per account.
  pub included_egress_gb: Decimal,
  /// Price of a million KV reads (`get`, `getWithMetadata`; edge cache
  /// hits too). Cloudflare's: 0.50 USD, 10,000,000 included.
  pub per_million_kv_reads: Decimal,
  /// Price of a million KV writes (`put`). Cloudflare's: 5.00 USD,
  /// 1,000,000 included.
  pub per_million_kv_writes: Decimal,
  /// Price of a million KV deletes. Cloudflare's: 5.00 USD, 1,000,000
  /// included.
  pub per_million_kv_deletes: Decimal,
  /// Price of a million KV lists. Cloudflare's: 5.00 USD, 1,000,000
  /// included.
  pub per_million_kv_lists: Decimal,
  /// Price of a million queue operations (each 64 KB of a message written,
  /// read or deleted). Cloudflare's: 0.40 USD, 1,000,000 included.
  pub per_million_queue_operations: Decimal,
  /// KV reads included each month, per account.
  pub included_kv_reads: u64,
  /// KV writes included each month, per account.
  pub included_kv_writes: u64,
  /// KV deletes included each month, per account.
  pub included_kv_deletes: u64,
  /// KV lists included each month, per account.
  pub included_kv_lists: u64,
  /// Queue operations included each month, per account.
  pub included_queue_operations: u64,
}

impl PriceSheet {
  pub fn currency(&self) -> &str {
    self.currency.as_deref().unwrap_or("USD")
  }
}

/// One worker's usage on one day (UTC), from the usage records.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DayUsage {
  /// `YYYY-MM-DD`.
  pub day: String,
  pub worker: String,
  pub requests: u64,
  pub cpu_us: u64,
  pub egress_bytes: u64,
  pub kv_reads: u64,
  pub kv_writes: u64,
  pub kv_deletes: u64,
  pub kv_lists: u64,
  pub queue_ops: u64,
}

impl DayUsage {
  /// Nothing used yet by `worker` on `day`.
  pub fn new(day: String, worker: String) -> Self {
    Self {
      day,
      worker,
      requests: 0,
      cpu_us: 0,
      egress_bytes: 0,
      kv_reads: 0,
      kv_writes: 0,
      kv_deletes: 0,
      kv_lists: 0,
      queue_ops: 0,
    }
  }
}

/// A line item. New items are added at the end, so the order of lines on
/// invoices issued before them does not change; such invoices read back
/// as issued (they simply have no lines for the newer items).
#[derive(
  Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Item {
  Requests,
  CpuMs,
  EgressGb,
  KvReads,
  KvWrites,
  KvDeletes,
  KvLists,
  QueueOperations,
}

impl Item {
  const ALL: [Item; 8] = [
    Item::Requests,
    Item::CpuMs,
    Item::EgressGb,
    Item::KvReads,
    Item::KvWrites,
    Item::KvDeletes,
    Item::KvLists,
    Item::QueueOperations,
  ];

  pub fn as_str(self) -> &'static str {
    match self {
      Item::Requests => "requests",
      Item::CpuMs => "cpu_ms",
      Item::EgressGb => "egress_gb",
      Item::KvReads => "kv_reads",
      Item::KvWrites => "kv_writes",
      Item::KvDeletes => "kv_deletes",
      Item::KvLists => "kv_lists",
      Item::QueueOperations => "queue_operations",
    }
  }

  fn quantity(self, u: &DayUsage) -> Decimal {
    match self {
      Item::Requests => Decimal::from(u.requests),
      // Exact: µs → ms and bytes → GB are powers of ten.
      Item::CpuMs => Decimal::from(u.cpu_us) / Decimal::from(1000),
      Item::EgressGb => Decimal::from(u.egress_bytes) / Decimal::from(1_000_000_000u64),
      Item::KvReads => Decimal::from(u.kv_reads),
      Item::KvWrites => Decimal::from(u.kv_writes),
      Item::KvDeletes => Decimal::from(u.kv_deletes),
      Item::KvLists => Decimal::from(u.kv_lists),
      Item::QueueOperations => Decimal::from(u.queue_ops),
    }
  }

  fn unit_price(self, sheet: &PriceSheet) -> Decimal {
    let per_million = match self {
      Item::EgressGb => return sheet.per_gb_egress,
      Item::Requests => sheet.per_million_requests,
      Item::CpuMs => sheet.per_million_cpu_ms,
      Item::KvReads => sheet.per_million_kv_reads,
      Item::KvWrites => sheet.per_million_kv_writes,
      Item::KvDeletes => sheet.per_million_kv_deletes,
      Item::KvLists => sheet.per_million_kv_lists,
      Item::QueueOperations => sheet.per_million_queue_operations,
    };
    per_million / Decimal::from(1_000_000)
  }

  fn included(self, sheet: &PriceSheet) -> Decimal {
    match self {
      Item::Requests => Decimal::from(sheet.included_requests),
      Item::CpuMs => Decimal::from(sheet.included_cpu_ms),
      Item::EgressGb => sheet.included_egress_gb,
      Item::KvReads => Decimal::from(sheet.included_kv_reads),
      Item::KvWrites => Decimal::from(sheet.included_kv_writes),
      Item::KvDeletes => Decimal::from(sheet.included_kv_deletes),
      Item::KvLists => Decimal::from(sheet.included_kv_lists),
      Item::QueueOperations => Decimal::from(sheet.included_queue_operations),
    }
  }
}

/// A line of an invoice. Decimals are strings in JSON, so no client reads
/// them as floats.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Line {
  /// The worker, or `None` for the account's allowance credit.
  pub worker: Option<String>,
  pub item: Item,
  #[schema(value_type = String)]
  #[serde(with = "rust_decimal::serde::str")]
  pub quantity: Decimal,
  #[schema(value_type = String)]
  #[serde(with = "rust_decimal::serde::str")]
  pub unit_price: Decimal,
  #[schema(value_type = String)]
  #[serde(with = "rust_decimal::serde::str")]
  pub amount: Decimal,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DayTotal {
  pub day: String,
  #[schema(value_type = String)]
  #[serde(with = "rust_decimal::serde::str")]
  pub amount: Decimal,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Invoice {
  pub account: String,
  /// `YYYY-MM`.
  pub month: String,
  pub currency: String,
  pub lines: Vec<Line>,
  /// What each day cost after the allowance; they add up to `total`.
  pub days: Vec<DayTotal>,
  /// Exact.
  #[schema(value_type = String)]
  #[serde(with = "rust_decimal::serde::str")]
  pub total: Decimal,
  /// `total` rounded half away from zero to cents: the amount due.
  #[schema(value_type = String)]
  #[serde(with = "rust_decimal::serde::str")]
  pub amount_due: Decimal,
  /// Whether the month is over (its invoice no longer changes).
  pub closed: bool,
}

/// The invoice of `account` for `month` from its workers' daily usage.
pub fn invoice(
  account: &str,
  month: &str,
  sheet: &PriceSheet,
  usage: &[DayUsage],
  closed: bool,
) -> Invoice {
  let mut lines = Vec::new();
  let mut per_worker: BTreeMap<(&str, Item), Decimal> = BTreeMap::new();
  for u in usage {
    for item in Item::ALL {
      *per_worker.entry((&u.worker, item)).or_default() += item.quantity(u);
    }
  }
  let mut totals: BTreeMap<Item, Decimal> = BTreeMap::new();
  for ((worker, item), quantity) in &per_worker {
    if quantity.is_zero() {
      continue;
    }
    let unit_price = item.unit_price(sheet);
    *totals.entry(*item).or_default() += quantity;
    lines.push(Line {
      worker: Some(worker.to_string()),
      item: *item,
      quantity: quantity.normalize(),
      unit_price: unit_price.normalize(),
      amount: (quantity * unit_price).normalize(),
    });
  }
  for (item, total) in &totals {
    let credit = (*total).min(item.included(sheet));
    if !credit.is_zero() && !item.unit_price(sheet).is_zero() {
      lines.push(Line {
        worker: None,
        item: *item,
        quantity: (-credit).normalize(),
        unit_price: item.unit_price(sheet).normalize(),
        amount: (-credit * item.unit_price(sheet)).normalize(),
      });
    }
  }
  // Days in order, each consuming what is left of the allowance.
  let mut by_day: BTreeMap<&str, BTreeMap<Item, Decimal>> = BTreeMap::new();
  for u in usage {
    let day = by_day.entry(&u.day).or_default();
    for item in Item::ALL {
      *day.entry(item).or_default() += item.quantity(u);
    }
  }
  let mut left: BTreeMap<Item, Decimal> =
    Item::ALL.iter().map(|i| (*i, i.included(sheet))).collect();
  let mut days = Vec::new();
  for (day, items) in by_day {
    let mut amount = Decimal::ZERO;
    for (item, quantity) in items {
      let free = left[&item].min(quantity);
      *left.get_mut(&item).expect("every item") -= free;
      amount += (quantity - free) * item.unit_price(sheet);
    }
    days.push(DayTotal {
      day: day.to_string(),
      amount: amount.normalize(),
    });
  }
  let total: Decimal = lines.iter().map(|l| l.amount).sum();
  Invoice {
    account: account.to_string(),
    month: month.to_string(),
    currency: sheet.currency().to_string(),
    lines,
    days,
    total: total.normalize(),
    amount_due: {
      let mut due =
        total.round_dp_with_strategy(2, rust_decimal::RoundingStrategy::MidpointAwayFromZero);
      due.rescale(2);
      due
    },
    closed,
  }
}

/// The invoice as CSV: one row per line, then the total.
pub fn csv(invoice: &Invoice) -> String {
  let mut out = String::from("worker,item,quantity,unit_price,amount,currency\n");
  for l in &invoice.lines {
    out.push_str(&format!(
      "{},{},{},{},{},{}\n",
      l.worker.as_deref().unwrap_or("(included allowance)"),
      l.item.as_str(),
      l.quantity,
      l.unit_price,
      l.amount,
      invoice.currency
    ));
  }
  out.push_str(&format!(
    "total,,,,{},{}\namount_due,,,,{},{}\n",
    invoice.total, invoice.currency, invoice.amount_due, invoice.currency
  ));
  out
}

/// The invoice of `account` for `month` as of `now` (Unix seconds). A
/// closed month's is issued once and then read back unchanged.
pub async fn invoice_for(
  db: &crate::db::Db,
  sheet: &PriceSheet,
  account: &str,
  month: &str,
  now: i64,
) -> Result<Invoice, crate::db::Error> {
  let (start, end) = month_bounds(month).ok_or_else(|| {
    crate::db::Error::Invalid(format!("month {month:?} is not a month like \"2026-11\""))
  })?;
  let (db, sheet, account, month) = (
    db.clone(),
    sheet.clone(),
    account.to_string(),
    month.to_string(),
  );
  crate::db::blocking(move || {
    if !db.account_exists(&account)? {
      return Err(crate::db::Error::NotFound(format!(
        "no account named {account:?}"
      )));
    }
    let closed = end <= now;
    if closed {
      if let Some(body) = db.issued_invoice(&account, &month)? {
        return serde_json::from_str(&body).map_err(|e| crate::db::Error::Corrupt(e.to_string()));
      }
    }
    let usage = db.billable_usage(&account, &month, start, end)?;
    let invoice = invoice(&account, &month, &sheet, &usage, closed);
    if closed {
      let body = db.issue_invoice(&invoice, now)?;
      return serde_json::from_str(&body).map_err(|e| crate::db::Error::Corrupt(e.to_string()));
    }
    Ok(invoice)
  })
  .await
}

/// Checks `YYYY-MM` and returns the Unix seconds of its first instant and
/// of the next month's.
pub fn month_bounds(month: &str) -> Option<(i64, i64)> {
  let (y, m) = month.split_once('-')?;
  if y.len() != 4 || m.len() != 2 {
    return None;
  }
  let (y, m): (i32, u8) = (y.parse().ok()?, m.parse().ok()?);
  let month = time::Month::try_from(m).ok()?;
  let start = time::Date::from_calendar_date(y, month, 1).ok()?;
  let next = if month == time::Month::December {
    time::Date::from_calendar_date(y + 1, time::Month::January, 1).ok()?
  } else {
    time::Date::from_calendar_date(y, month.next(), 1).ok()?
  };
  let secs = |d: time::Date| d.midnight().assume_utc().unix_timestamp();
  Some((secs(start), secs(next)))
}

#[cfg(test)]
mod tests {
  use std::str::FromStr;

  use super::*;

  fn d(s: &str) -> Decimal {
    Decimal::from_str(s).unwrap()
  }

  fn day(day: &str, worker: &str, requests: u64, cpu_us: u64, egress: u64) -> DayUsage {
    DayUsage {
      requests,
      cpu_us,
      egress_bytes: egress,
      ..DayUsage::new(day.into(), worker.into())
    }
  }

  fn sheet() -> PriceSheet {
    PriceSheet {
      currency: Some("EUR".into()),
      per_million_requests: d("0.30"),
      per_million_cpu_ms: d("0.02"),
      per_gb_egress: d("0.05"),
      included_requests: 1_000_000,
      ..PriceSheet::default()
    }
  }

  /// Cloudflare's published storage prices (Workers Paid, USD).
  fn storage_sheet() -> PriceSheet {
    PriceSheet {
      per_million_kv_reads: d("0.50"),
      per_million_kv_writes: d("5.00"),
      per_million_kv_deletes: d("5.00"),
      per_million_kv_lists: d("5.00"),
      per_million_queue_operations: d("0.40"),
      included_kv_reads: 10_000_000,
      included_kv_writes: 1_000_000,
      included_kv_deletes: 1_000_000,
      included_kv_lists: 1_000_000,
      included_queue_operations: 1_000_000,
      ..sheet()
    }
  }

  #[test]
  fn kv_and_queue_operations_are_priced_per_million_after_their_allowance() {
    let usage = [
      DayUsage {
        kv_reads: 12_000_000,
        kv_writes: 1_200_000,
        kv_deletes: 3,
        kv_lists: 1_000_001,
        queue_ops: 2_500_000,
        ..DayUsage::new("2026-11-01".into(), "api".into())
      },
      DayUsage {
        kv_writes: 300_000,
        queue_ops: 7,
        ..DayUsage::new("2026-11-02".into(), "eater".into())
      },
    ];
    let inv = invoice("acme", "2026-11", &storage_sheet(), &usage, false);
    let line = |w: Option<&str>, item| {
      inv
        .lines
        .iter()
        .find(|l| l.worker.as_deref() == w && l.item == item)
        .map(|l| (l.quantity, l.unit_price, l.amount))
    };
    assert_eq!(
      line(Some("api"), Item::KvReads),
      Some((d("12000000"), d("0.0000005"), d("6")))
    );
    assert_eq!(
      line(Some("api"), Item::KvDeletes),
      Some((d("3"), d("0.000005"), d("0.000015")))
    );
    assert_eq!(
      line(Some("eater"), Item::QueueOperations),
      Some((d("7"), d("0.0000004"), d("0.0000028")))
    );
    assert_eq!(line(Some("eater"), Item::KvReads), None, "nothing used");
    assert_eq!(
      line(None, Item::KvWrites),
      Some((d("-1000000"), d("0.000005"), d("-5")))
    );
    // Reads: 2,000,000 × 0.50/M = 1; writes: 500,000 × 5/M = 2.5;
    // deletes: all 3 included; lists: 1 × 5/M = 0.000005; queues:
    // 1,500,007 × 0.40/M = 0.6000028.
    assert_eq!(inv.total, d("4.1000078"));
    assert_eq!(inv.amount_due, d("4.10"));
    let days: Decimal = inv.days.iter().map(|d| d.amount).sum();
    assert_eq!(days, inv.total);
    let csv = csv(&inv);
    assert!(
      csv.contains("eater,queue_operations,7,0.0000004,0.0000028,EUR\n"),
      "{csv}"
    );
    assert!(
      csv.contains("(included allowance),kv_reads,-10000000,0.0000005,-5,EUR\n"),
      "{csv}"
    );
  }

  #[test]
  fn an_invoice_issued_before_storage_items_reads_back_unchanged() {
    let issued = r#"{"account":"acme","month":"2026-10","currency":"EUR","lines":[
      {"worker":"api","item":"requests","quantity":"4000","unit_price":"0.0000005","amount":"0.002"},
      {"worker":null,"item":"requests","quantity":"-1000","unit_price":"0.0000005","amount":"-0.0005"}],
      "days":[{"day":"2026-10-03","amount":"0.0015"}],"total":"0.0015","amount_due":"0.00","closed":true}"#;
    let inv: Invoice = serde_json::from_str(issued).unwrap();
    assert_eq!(inv.lines.len(), 2);
    assert_eq!(inv.total, d("0.0015"));
    assert_eq!(
      serde_json::to_value(&inv).unwrap(),
      serde_json::from_str::<serde_json::Value>(issued).unwrap()
    );
  }

  #[test]
  fn an_invoice_matches_a_hand_computation_to_the_cent() {
    let usage = [
      day("2026-11-01", "api", 900_000, 1_500_000_000, 2_000_000_000),
      day("2026-11-02", "api", 600_000, 500_000_000, 0),
      day("2026-11-02", "cron", 1_440, 2_880_000, 0),
    ];
    let inv = invoice("acme", "2026-11", &sheet(), &usage, true);
    // Requests: 1,501,440 − 1,000,000 included = 501,440 × 0.30/M = 0.150432
    // CPU: (1,500,000 + 500,000 + 2,880) ms × 0.02/M = 0.04005760
    // Egress: 2 GB × 0.05 = 0.10
    assert_eq!(inv.total, d("0.2904896"));
    assert_eq!(inv.amount_due, d("0.29"));
    let by = |w: Option<&str>, item| {
      inv
        .lines
        .iter()
        .find(|l| l.worker.as_deref() == w && l.item == item)
        .unwrap()
        .amount
    };
    assert_eq!(by(Some("api"), Item::Requests), d("0.45"));
    assert_eq!(by(Some("cron"), Item::CpuMs), d("0.0000576"));
    assert_eq!(by(None, Item::Requests), d("-0.3"));
    // The days add up to the month, the allowance used up on the 2nd.
    let days: Decimal = inv.days.iter().map(|d| d.amount).sum();
    assert_eq!(days, inv.total);
    assert_eq!(inv.days[0].amount, d("0.13")); // 1,500 s CPU = 0.03, 2 GB = 0.10
    let csv = csv(&inv);
    assert!(
      csv.starts_with("worker,item,quantity,unit_price,amount,currency\n"),
      "{csv}"
    );
    assert!(
      csv.contains("api,requests,1500000,0.0000003,0.45,EUR"),
      "{csv}"
    );
    assert!(csv.ends_with("amount_due,,,,0.29,EUR\n"), "{csv}");
  }

  #[test]
  fn idle_workers_and_free_sheets_cost_nothing() {
    let inv = invoice("acme", "2026-11", &sheet(), &[], false);
    assert!(inv.lines.is_empty());
    assert_eq!(inv.total, Decimal::ZERO);
    let inv = invoice(
      "acme",
      "2026-11",
      &PriceSheet::default(),
      &[day("2026-11-01", "api", 10, 10, 10)],
      false,
    );
    assert_eq!(inv.total, Decimal::ZERO);
    assert_eq!(inv.currency, "USD");
  }

  #[test]
  fn months_have_bounds() {
    assert_eq!(
      month_bounds("2026-11"),
      Some((1_793_491_200, 1_796_083_200))
    );
    assert_eq!(month_bounds("2026-12").unwrap().1, 1_798_761_600);
    for bad in ["2026-13", "2026-1", "26-11", "2026/11", "x"] {
      assert_eq!(month_bounds(bad), None, "{bad}");
    }
  }
}
