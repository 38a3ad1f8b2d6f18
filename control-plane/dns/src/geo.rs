//! Where a client is and which edges are nearest to it: `[[network]]` rules
//! first (longest prefix), then the MaxMind-format database; edges in the
//! client's region come first, then by great-circle distance, then by name,
//! so a client nobody can place gets one stable order.

use std::net::IpAddr;

use serde::Deserialize;

use crate::config::NetworkRule;

/// What is known of a client's place.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Client {
  pub region: Option<String>,
  /// Latitude and longitude in degrees.
  pub location: Option<[f64; 2]>,
}

/// Maps client addresses to places.
pub struct Geo {
  /// Longest prefix first, so the first match is the most specific.
  networks: Vec<NetworkRule>,
  db: Option<maxminddb::Reader<Vec<u8>>>,
}

impl std::fmt::Debug for Geo {
  fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
    f.debug_struct("Geo")
      .field("networks", &self.networks.len())
      .field("db", &self.db.is_some())
      .finish()
  }
}

/// The part of a GeoIP2/GeoLite2 City record that places a client.
#[derive(Deserialize)]
struct CityRecord {
  location: Option<LocationRecord>,
}

#[derive(Deserialize)]
struct LocationRecord {
  latitude: Option<f64>,
  longitude: Option<f64>,
}

impl Geo {
  /// `db` holds the bytes of a MaxMind-format database, if any.
  pub fn new(mut networks: Vec<NetworkRule>, db: Option<Vec<u8>>) -> Result<Self, String> {
    networks.sort_by_key(|n| std::cmp::Reverse(n.cidr.prefix_len()));
    let db = db
      .map(maxminddb::Reader::from_source)
      .transpose()
      .map_err(|e| format!("not a MaxMind-format database ({e})"))?;
    Ok(Self { networks, db })
  }

  /// Where `ip` is, as far as the rules and the database say.
  pub fn locate(&self, ip: IpAddr) -> Client {
    let ip = ip.to_canonical();
    let mut client = Client::default();
    if let Some(rule) = self.networks.iter().find(|n| n.cidr.contains(&ip)) {
      client.region.clone_from(&rule.region);
      client.location = rule.location;
    }
    if client.location.is_none() {
      client.location = self.db_location(ip);
    }
    client
  }

  fn db_location(&self, ip: IpAddr) -> Option<[f64; 2]> {
    // An IPv6 address in an IPv4-only database is an error: unknown.
    let found = self.db.as_ref()?.lookup(ip).ok()?;
    let record: CityRecord = found.decode().ok()??;
    let loc = record.location?;
    Some([loc.latitude?, loc.longitude?])
  }
}

/// An edge as ranking sees it.
#[derive(Clone, Copy, Debug)]
pub struct Place<'a> {
  pub name: &'a str,
  pub region: Option<&'a str>,
  pub location: Option<[f64; 2]>,
}

/// Sorts `items` nearest first for `client`: same region first, then by
/// great-circle distance (edges without a location after those with one),
/// then by name.
pub fn rank<T>(client: &Client, items: &mut [T], place: impl Fn(&T) -> Place<'_>) {
  let key = |p: Place<'_>| {
    let other_region = match (&client.region, p.region) {
      (Some(c), Some(e)) => c != e,
      _ => true,
    };
    let distance = match (client.location, p.location) {
      (Some(c), Some(e)) => distance_km(c, e),
      _ => f64::INFINITY,
    };
    (other_region, distance)
  };
  items.sort_by(|a, b| {
    let (pa, pb) = (place(a), place(b));
    let ((ra, da), (rb, db)) = (key(pa), key(pb));
    ra.cmp(&rb)
      .then_with(|| da.total_cmp(&db))
      .then_with(|| pa.name.cmp(pb.name))
  });
}

/// Great-circle distance in km between two `[lat, lon]` points (haversine).
pub fn distance_km([lat1, lon1]: [f64; 2], [lat2, lon2]: [f64; 2]) -> f64 {
  const EARTH_RADIUS_KM: f64 = 6371.0;
  let (p1, p2) = (lat1.to_radians(), lat2.to_radians());
  let dp = p2 - p1;
  let dl = (lon2 - lon1).to_radians();
  let a = (dp / 2.0).sin().powi(2) + p1.cos() * p2.cos() * (dl / 2.0).sin().powi(2);
  2.0 * EARTH_RADIUS_KM * a.sqrt().min(1.0).asin()
}

#[cfg(test)]
mod tests {
  use super::*;

  const FRANKFURT: [f64; 2] = [50.11, 8.68];
  const NEW_YORK: [f64; 2] = [40.71, -74.01];
  const PARIS: [f64; 2] = [48.86, 2.35];

  type Edge = (&'static str, Option<&'static str>, Option<[f64; 2]>);

  fn edges() -> Vec<Edge> {
    vec![
      ("us", Some("us-east"), Some(NEW_YORK)),
      ("eu", Some("eu-west"), Some(FRANKFURT)),
      ("zz", None, None),
    ]
  }

  fn ranked(client: &Client) -> Vec<&'static str> {
    let mut e = edges();
    rank(client, &mut e, |(name, region, location)| Place {
      name,
      region: *region,
      location: *location,
    });
    e.into_iter().map(|(n, _, _)| n).collect()
  }

  #[test]
  fn distance_is_great_circle() {
    let d = distance_km(FRANKFURT, NEW_YORK);
    assert!((6150.0..6250.0).contains(&d), "{d}");
    assert_eq!(distance_km(PARIS, PARIS), 0.0);
  }

  #[test]
  fn region_first_then_distance_then_name() {
    assert_eq!(
      ranked(&Client {
        region: None,
        location: Some(PARIS)
      }),
      ["eu", "us", "zz"]
    );
    // The region beats distance.
    assert_eq!(
      ranked(&Client {
        region: Some("us-east".into()),
        location: Some(PARIS)
      }),
      ["us", "eu", "zz"]
    );
    // Nobody knows where: one stable order, by name.
    assert_eq!(ranked(&Client::default()), ["eu", "us", "zz"]);
  }

  #[test]
  fn network_rules_beat_the_database_and_the_longest_prefix_wins() {
    let rule = |cidr: &str, region: &str| NetworkRule {
      cidr: cidr.parse().unwrap(),
      region: Some(region.into()),
      location: None,
    };
    let geo = Geo::new(
      vec![
        rule("10.0.0.0/8", "us-east"),
        rule("10.1.0.0/16", "eu-west"),
      ],
      None,
    )
    .unwrap();
    assert_eq!(
      geo.locate("10.1.2.3".parse().unwrap()).region.as_deref(),
      Some("eu-west")
    );
    assert_eq!(
      geo.locate("10.2.2.3".parse().unwrap()).region.as_deref(),
      Some("us-east")
    );
    // An IPv4-mapped IPv6 address is the IPv4 address.
    assert_eq!(
      geo
        .locate("::ffff:10.2.2.3".parse().unwrap())
        .region
        .as_deref(),
      Some("us-east")
    );
    assert_eq!(geo.locate("192.0.2.1".parse().unwrap()), Client::default());
    assert!(Geo::new(vec![], Some(b"not a database".to_vec())).is_err());
  }
}
