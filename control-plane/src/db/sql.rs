//! The SQL surface the store's modules use, over either backend: SQLite
//! (rusqlite, the embedded default) or PostgreSQL (tokio-postgres, see
//! `pg`). Statements are written once, in the dialect both
//! accept, with SQLite's `?N` / `?` placeholders; PostgreSQL gets them
//! renumbered as `$N`. Values cross as a small [`Value`] enum, and rows come
//! back owned ([`Row`]), so no module names a driver type.
//!
//! Why not sqlx's `Any`: every call here is blocking on purpose (the store
//! runs on tokio's blocking threads, see [`super::blocking`]), and SQLite's
//! synchronous `FULL` commit is what usage acknowledgements rely on.

use std::cell::RefCell;
use std::sync::MutexGuard;

use bytes::BytesMut;
use tokio_postgres::types::FromSql as PgFromSql;
use tokio_postgres::types::IsNull;
use tokio_postgres::types::ToSql as PgToSql;
use tokio_postgres::types::Type;

use super::pg::PgConn;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
  #[error("{0}")]
  Sqlite(#[from] rusqlite::Error),
  #[error("{0}")]
  Postgres(#[from] tokio_postgres::Error),
  #[error("PostgreSQL: {0}")]
  Unavailable(String),
  #[error("the query returned no rows")]
  NoRows,
  #[error("column {column}: expected {expected}, found {found}")]
  Type {
    column: usize,
    expected: &'static str,
    found: &'static str,
  },
}

/// One SQL value, as both backends store it.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
  Null,
  Int(i64),
  Real(f64),
  Text(String),
  Blob(Vec<u8>),
}

impl Value {
  fn kind(&self) -> &'static str {
    match self {
      Value::Null => "NULL",
      Value::Int(_) => "an integer",
      Value::Real(_) => "a real",
      Value::Text(_) => "text",
      Value::Blob(_) => "a blob",
    }
  }
}

impl From<String> for Value {
  fn from(s: String) -> Self {
    Value::Text(s)
  }
}
impl From<&str> for Value {
  fn from(s: &str) -> Self {
    Value::Text(s.to_owned())
  }
}
impl From<i64> for Value {
  fn from(i: i64) -> Self {
    Value::Int(i)
  }
}

/// What can be bound to a placeholder.
pub trait ToSql {
  fn to_value(&self) -> Value;

  /// The value as SQLite binds it. Text and blobs override this to lend
  /// their bytes: a copy of each made storing trace events (thousands of
  /// rows a second) cost more than binding them.
  fn to_sqlite(&self) -> rusqlite::types::ToSqlOutput<'_> {
    rusqlite::types::ToSqlOutput::Owned(self.to_value().sqlite_ref().into())
  }
}

/// Text or a blob, lent to SQLite.
fn lent_text(s: &str) -> rusqlite::types::ToSqlOutput<'_> {
  rusqlite::types::ToSqlOutput::Borrowed(rusqlite::types::ValueRef::Text(s.as_bytes()))
}

fn lent_blob(b: &[u8]) -> rusqlite::types::ToSqlOutput<'_> {
  rusqlite::types::ToSqlOutput::Borrowed(rusqlite::types::ValueRef::Blob(b))
}

/// What a column can be read as.
pub trait FromSql: Sized {
  fn from_value(v: Value) -> Option<Self>;
  const EXPECTED: &'static str;
}

macro_rules! int_types {
  ($($t:ty),*) => {$(
    impl ToSql for $t {
      fn to_value(&self) -> Value {
        Value::Int(i64::try_from(*self).unwrap_or(i64::MAX))
      }
    }
    impl FromSql for $t {
      fn from_value(v: Value) -> Option<Self> {
        match v {
          Value::Int(i) => <$t>::try_from(i).ok(),
          _ => None,
        }
      }
      const EXPECTED: &'static str = "an integer";
    }
  )*};
}
int_types!(i64, i32, u32, u16, u8, u64, usize);

impl ToSql for bool {
  fn to_value(&self) -> Value {
    Value::Int(i64::from(*self))
  }
}
impl FromSql for bool {
  fn from_value(v: Value) -> Option<Self> {
    match v {
      Value::Int(i) => Some(i != 0),
      _ => None,
    }
  }
  const EXPECTED: &'static str = "a boolean";
}
impl ToSql for f64 {
  fn to_value(&self) -> Value {
    Value::Real(*self)
  }
}
impl FromSql for f64 {
  fn from_value(v: Value) -> Option<Self> {
    match v {
      Value::Real(f) => Some(f),
      #[allow(clippy::cast_precision_loss)]
      Value::Int(i) => Some(i as f64),
      _ => None,
    }
  }
  const EXPECTED: &'static str = "a number";
}
impl ToSql for str {
  fn to_value(&self) -> Value {
    Value::Text(self.to_owned())
  }
  fn to_sqlite(&self) -> rusqlite::types::ToSqlOutput<'_> {
    lent_text(self)
  }
}
impl ToSql for String {
  fn to_value(&self) -> Value {
    Value::Text(self.clone())
  }
  fn to_sqlite(&self) -> rusqlite::types::ToSqlOutput<'_> {
    lent_text(self)
  }
}
impl FromSql for String {
  fn from_value(v: Value) -> Option<Self> {
    match v {
      Value::Text(s) => Some(s),
      Value::Blob(b) => String::from_utf8(b).ok(),
      _ => None,
    }
  }
  const EXPECTED: &'static str = "text";
}
impl ToSql for [u8] {
  fn to_value(&self) -> Value {
    Value::Blob(self.to_vec())
  }
  fn to_sqlite(&self) -> rusqlite::types::ToSqlOutput<'_> {
    lent_blob(self)
  }
}
impl ToSql for Vec<u8> {
  fn to_value(&self) -> Value {
    Value::Blob(self.clone())
  }
  fn to_sqlite(&self) -> rusqlite::types::ToSqlOutput<'_> {
    lent_blob(self)
  }
}
impl FromSql for Vec<u8> {
  fn from_value(v: Value) -> Option<Self> {
    match v {
      Value::Blob(b) => Some(b),
      Value::Text(s) => Some(s.into_bytes()),
      _ => None,
    }
  }
  const EXPECTED: &'static str = "a blob";
}
impl ToSql for Value {
  fn to_value(&self) -> Value {
    self.clone()
  }
  fn to_sqlite(&self) -> rusqlite::types::ToSqlOutput<'_> {
    rusqlite::types::ToSqlOutput::Borrowed(self.sqlite_ref())
  }
}
impl FromSql for Value {
  fn from_value(v: Value) -> Option<Self> {
    Some(v)
  }
  const EXPECTED: &'static str = "a value";
}
impl<T: ToSql> ToSql for Option<T> {
  fn to_value(&self) -> Value {
    self.as_ref().map_or(Value::Null, ToSql::to_value)
  }
  fn to_sqlite(&self) -> rusqlite::types::ToSqlOutput<'_> {
    self.as_ref().map_or(
      rusqlite::types::ToSqlOutput::Owned(rusqlite::types::Value::Null),
      ToSql::to_sqlite,
    )
  }
}
impl<T: FromSql> FromSql for Option<T> {
  fn from_value(v: Value) -> Option<Self> {
    match v {
      Value::Null => Some(None),
      v => T::from_value(v).map(Some),
    }
  }
  const EXPECTED: &'static str = T::EXPECTED;
}
impl<T: ToSql + ?Sized> ToSql for &T {
  fn to_value(&self) -> Value {
    (**self).to_value()
  }
  fn to_sqlite(&self) -> rusqlite::types::ToSqlOutput<'_> {
    (**self).to_sqlite()
  }
}

/// A statement's parameters: `()`, an array, [`params!`](crate::params), or
/// a `Vec<Value>`.
pub trait Params {
  fn values(self) -> Vec<Value>;

  /// Binds the parameters to `stmt` and runs it; returns the rows changed.
  fn execute_sqlite(self, stmt: &mut rusqlite::Statement<'_>) -> rusqlite::Result<usize>
  where
    Self: Sized,
  {
    let values = self.values();
    stmt.execute(rusqlite::params_from_iter(values.iter()))
  }
}
impl Params for () {
  fn values(self) -> Vec<Value> {
    Vec::new()
  }
}
impl<T: ToSql, const N: usize> Params for [T; N] {
  fn values(self) -> Vec<Value> {
    self.iter().map(ToSql::to_value).collect()
  }
}
impl Params for &[&dyn ToSql] {
  fn values(self) -> Vec<Value> {
    self.iter().map(|p| p.to_value()).collect()
  }

  /// Binds each parameter in place (see [`ToSql::to_sqlite`]), checking
  /// their count as rusqlite's `execute` does.
  fn execute_sqlite(self, stmt: &mut rusqlite::Statement<'_>) -> rusqlite::Result<usize> {
    let expected = stmt.parameter_count();
    if self.len() != expected {
      return Err(rusqlite::Error::InvalidParameterCount(self.len(), expected));
    }
    for (i, p) in self.iter().enumerate() {
      stmt.raw_bind_parameter(i + 1, p.to_sqlite())?;
    }
    stmt.raw_execute()
  }
}
impl Params for Vec<Value> {
  fn values(self) -> Vec<Value> {
    self
  }
}

/// Parameters of mixed types, like rusqlite's macro of the same name.
#[macro_export]
macro_rules! params {
  ($($p:expr),* $(,)?) => {
    &[$(&$p as &dyn $crate::db::sql::ToSql),*] as &[&dyn $crate::db::sql::ToSql]
  };
}
pub use crate::params;

/// One result row, owned.
#[derive(Debug)]
pub struct Row(Vec<Value>);

impl Row {
  /// Column `i` as `T`; a wrong type is an error naming the column.
  pub fn get<T: FromSql>(&self, i: usize) -> Result<T> {
    let v = self.0.get(i).cloned().unwrap_or(Value::Null);
    let found = v.kind();
    T::from_value(v).ok_or(Error::Type {
      column: i,
      expected: T::EXPECTED,
      found,
    })
  }
}

/// `query_row(..).optional()`: no row is `None`, as in rusqlite.
pub trait OptionalExtension<T> {
  fn optional(self) -> Result<Option<T>>;
}
impl<T> OptionalExtension<T> for Result<T> {
  fn optional(self) -> Result<Option<T>> {
    match self {
      Ok(v) => Ok(Some(v)),
      Err(Error::NoRows) => Ok(None),
      Err(e) => Err(e),
    }
  }
}

pub(super) enum SqliteRef<'a> {
  Guard(MutexGuard<'a, rusqlite::Connection>),
  Borrowed(&'a rusqlite::Connection),
}

pub(super) enum PgRef<'a> {
  Pooled(PgConn),
  Borrowed(&'a mut PgConn),
}

impl PgRef<'_> {
  fn client(&mut self) -> &mut PgConn {
    match self {
      PgRef::Pooled(c) => c,
      PgRef::Borrowed(c) => c,
    }
  }
}

/// A connection (or a transaction on one) of either backend.
pub struct Sql<'a>(Inner<'a>);

enum Inner<'a> {
  Sqlite(SqliteRef<'a>),
  Postgres(RefCell<PgRef<'a>>),
  /// No connection could be had; every call says why.
  Failed(String),
}

/// Which SQL dialect a connection speaks, for the few statements that
/// cannot be written once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
  Sqlite,
  Postgres,
}

impl<'a> Sql<'a> {
  pub(super) fn sqlite(conn: SqliteRef<'a>) -> Self {
    Self(Inner::Sqlite(conn))
  }

  pub(super) fn postgres(conn: PgRef<'a>) -> Self {
    Self(Inner::Postgres(RefCell::new(conn)))
  }

  pub(super) fn failed(e: &Error) -> Self {
    Self(Inner::Failed(e.to_string()))
  }

  pub fn dialect(&self) -> Dialect {
    match self.0 {
      Inner::Sqlite(_) => Dialect::Sqlite,
      Inner::Postgres(_) | Inner::Failed(_) => Dialect::Postgres,
    }
  }

  fn sqlite_conn(&self) -> Option<&rusqlite::Connection> {
    match &self.0 {
      Inner::Sqlite(SqliteRef::Guard(g)) => Some(g),
      Inner::Sqlite(SqliteRef::Borrowed(c)) => Some(c),
      Inner::Postgres(_) | Inner::Failed(_) => None,
    }
  }

  /// Runs one statement; returns the rows it changed.
  pub fn execute(&self, sql: &str, params: impl Params) -> Result<usize> {
    match &self.0 {
      Inner::Sqlite(_) => {
        let conn = self.sqlite_conn().expect("sqlite");
        let mut stmt = conn.prepare_cached(sql)?;
        Ok(params.execute_sqlite(&mut stmt)?)
      }
      Inner::Postgres(c) => {
        let sql = postgres_placeholders(sql);
        let n = c.borrow_mut().client().execute(&sql, params.values())?;
        Ok(usize::try_from(n).unwrap_or(usize::MAX))
      }
      Inner::Failed(e) => Err(Error::Unavailable(e.clone())),
    }
  }

  /// Runs statements separated by `;`, without parameters.
  pub fn execute_batch(&self, sql: &str) -> Result<()> {
    match &self.0 {
      Inner::Sqlite(_) => Ok(self.sqlite_conn().expect("sqlite").execute_batch(sql)?),
      Inner::Postgres(c) => c.borrow_mut().client().batch(sql),
      Inner::Failed(e) => Err(Error::Unavailable(e.clone())),
    }
  }

  /// Every row of a query.
  pub fn rows(&self, sql: &str, params: impl Params) -> Result<Vec<Row>> {
    let values = params.values();
    match &self.0 {
      Inner::Sqlite(_) => {
        let conn = self.sqlite_conn().expect("sqlite");
        let mut stmt = conn.prepare_cached(sql)?;
        sqlite_rows(&mut stmt, values)
      }
      Inner::Postgres(c) => {
        let sql = postgres_placeholders(sql);
        c.borrow_mut().client().query(&sql, values)
      }
      Inner::Failed(e) => Err(Error::Unavailable(e.clone())),
    }
  }

  /// The first row, mapped; [`Error::NoRows`] when there is none.
  pub fn query_row<T>(
    &self,
    sql: &str,
    params: impl Params,
    f: impl FnOnce(&Row) -> Result<T>,
  ) -> Result<T> {
    let rows = self.rows(sql, params)?;
    f(rows.first().ok_or(Error::NoRows)?)
  }

  /// A statement to run (rusqlite's shape: prepared, then queried). On
  /// SQLite it is taken from the connection's cache once and held until the
  /// `Stmt` is dropped: a loop of executions (a batch of invocation logs)
  /// then skips the cache's lookup and re-insert per row.
  pub fn prepare(&self, sql: &str) -> Result<Stmt<'_, 'a>> {
    let sqlite = match self.sqlite_conn() {
      Some(conn) => Some(conn.prepare_cached(sql)?),
      None => None,
    };
    Ok(Stmt {
      conn: self,
      sql: sql.to_owned(),
      sqlite,
    })
  }
}

/// Every row a prepared SQLite statement returns for `values`.
fn sqlite_rows(stmt: &mut rusqlite::Statement<'_>, values: Vec<Value>) -> Result<Vec<Row>> {
  let n = stmt.column_count();
  let mut rows = stmt.query(rusqlite::params_from_iter(values.iter()))?;
  let mut out = Vec::new();
  while let Some(row) = rows.next()? {
    let mut cols = Vec::with_capacity(n);
    for i in 0..n {
      cols.push(sqlite_value(row.get_ref(i)?));
    }
    out.push(Row(cols));
  }
  Ok(out)
}

/// A statement of a [`Sql`] connection.
pub struct Stmt<'c, 'a> {
  conn: &'c Sql<'a>,
  sql: String,
  /// On SQLite, the prepared statement (see [`Sql::prepare`]).
  sqlite: Option<rusqlite::CachedStatement<'c>>,
}

impl Stmt<'_, '_> {
  pub fn execute(&mut self, params: impl Params) -> Result<usize> {
    match &mut self.sqlite {
      Some(stmt) => Ok(params.execute_sqlite(stmt)?),
      None => self.conn.execute(&self.sql, params),
    }
  }

  fn rows(&mut self, params: impl Params) -> Result<Vec<Row>> {
    match &mut self.sqlite {
      Some(stmt) => sqlite_rows(stmt, params.values()),
      None => self.conn.rows(&self.sql, params),
    }
  }

  pub fn query_map<T>(
    &mut self,
    params: impl Params,
    f: impl FnMut(&Row) -> Result<T>,
  ) -> Result<std::vec::IntoIter<Result<T>>> {
    let rows = self.rows(params)?;
    Ok(rows.iter().map(f).collect::<Vec<_>>().into_iter())
  }

  pub fn query(&mut self, params: impl Params) -> Result<Rows> {
    Ok(Rows {
      rows: self.rows(params)?.into_iter(),
      current: None,
    })
  }

  pub fn query_row<T>(
    &mut self,
    params: impl Params,
    f: impl FnOnce(&Row) -> Result<T>,
  ) -> Result<T> {
    let rows = self.rows(params)?;
    f(rows.first().ok_or(Error::NoRows)?)
  }
}

/// Rows of [`Stmt::query`], walked with `next()` as in rusqlite.
pub struct Rows {
  rows: std::vec::IntoIter<Row>,
  current: Option<Row>,
}

impl Rows {
  #[allow(clippy::should_implement_trait, clippy::unnecessary_wraps)]
  pub fn next(&mut self) -> Result<Option<&Row>> {
    self.current = self.rows.next();
    Ok(self.current.as_ref())
  }
}

fn sqlite_value(v: rusqlite::types::ValueRef<'_>) -> Value {
  use rusqlite::types::ValueRef;
  match v {
    ValueRef::Null => Value::Null,
    ValueRef::Integer(i) => Value::Int(i),
    ValueRef::Real(f) => Value::Real(f),
    ValueRef::Text(t) => Value::Text(String::from_utf8_lossy(t).into_owned()),
    ValueRef::Blob(b) => Value::Blob(b.to_vec()),
  }
}

impl Value {
  /// The value as SQLite reads it, text and blobs lent.
  fn sqlite_ref(&self) -> rusqlite::types::ValueRef<'_> {
    use rusqlite::types::ValueRef;
    match self {
      Value::Null => ValueRef::Null,
      Value::Int(i) => ValueRef::Integer(*i),
      Value::Real(f) => ValueRef::Real(*f),
      Value::Text(s) => ValueRef::Text(s.as_bytes()),
      Value::Blob(b) => ValueRef::Blob(b),
    }
  }
}

impl rusqlite::ToSql for Value {
  fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
    Ok(ToSql::to_sqlite(self))
  }
}

/// `?N` and `?` placeholders as PostgreSQL's `$N` (outside quotes).
pub fn postgres_placeholders(sql: &str) -> String {
  let mut out = String::with_capacity(sql.len() + 8);
  let mut next = 0;
  let mut quote: Option<char> = None;
  let mut chars = sql.chars().peekable();
  while let Some(c) = chars.next() {
    match (quote, c) {
      (Some(q), c) if c == q => {
        quote = None;
        out.push(c);
      }
      (Some(_), c) => out.push(c),
      (None, '\'' | '"') => {
        quote = Some(c);
        out.push(c);
      }
      (None, '?') => {
        out.push('$');
        let mut digits = String::new();
        while let Some(d) = chars.peek().copied().filter(char::is_ascii_digit) {
          digits.push(d);
          chars.next();
        }
        if digits.is_empty() {
          next += 1;
          out.push_str(&next.to_string());
        } else {
          out.push_str(&digits);
        }
      }
      (None, c) => out.push(c),
    }
  }
  out
}

/// A PostgreSQL row as a [`Row`].
pub(super) fn pg_row(row: &tokio_postgres::Row) -> Result<Row> {
  (0..row.len())
    .map(|i| Ok(row.try_get::<usize, PgValue>(i)?.0))
    .collect::<Result<Vec<_>>>()
    .map(Row)
}

/// Values go in as the column's type says: PostgreSQL checks types where
/// SQLite does not, and the server tells the client what each placeholder
/// is.
impl PgToSql for Value {
  fn to_sql(
    &self,
    ty: &Type,
    out: &mut BytesMut,
  ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
    match self {
      Value::Null => Ok(IsNull::Yes),
      Value::Int(i) => match *ty {
        Type::INT8 => i.to_sql(ty, out),
        Type::INT4 => i32::try_from(*i)?.to_sql(ty, out),
        Type::INT2 => i16::try_from(*i)?.to_sql(ty, out),
        Type::BOOL => (*i != 0).to_sql(ty, out),
        #[allow(clippy::cast_precision_loss)]
        Type::FLOAT8 => (*i as f64).to_sql(ty, out),
        #[allow(clippy::cast_precision_loss)]
        Type::FLOAT4 => (*i as f32).to_sql(ty, out),
        Type::NUMERIC => rust_decimal::Decimal::from(*i).to_sql(ty, out),
        _ => i.to_string().to_sql(&Type::TEXT, out),
      },
      Value::Real(f) => match *ty {
        #[allow(clippy::cast_possible_truncation)]
        Type::FLOAT4 => (*f as f32).to_sql(ty, out),
        Type::NUMERIC => rust_decimal::Decimal::try_from(*f)?.to_sql(ty, out),
        _ => f.to_sql(&Type::FLOAT8, out),
      },
      Value::Text(s) => match *ty {
        Type::BYTEA => s.as_bytes().to_sql(ty, out),
        _ => s.as_str().to_sql(&Type::TEXT, out),
      },
      Value::Blob(b) => match *ty {
        Type::TEXT | Type::VARCHAR => std::str::from_utf8(b)?.to_sql(&Type::TEXT, out),
        _ => b.as_slice().to_sql(&Type::BYTEA, out),
      },
    }
  }

  fn accepts(_: &Type) -> bool {
    true
  }

  tokio_postgres::types::to_sql_checked!();
}

/// Any column, read as the [`Value`] it is closest to. NUMERIC (what
/// `SUM` of integers gives) comes back as an integer when it is whole.
struct PgValue(Value);

impl<'r> PgFromSql<'r> for PgValue {
  fn from_sql(ty: &Type, raw: &'r [u8]) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
    Ok(PgValue(match *ty {
      Type::INT8 => Value::Int(i64::from_sql(ty, raw)?),
      Type::INT4 => Value::Int(i32::from_sql(ty, raw)?.into()),
      Type::INT2 => Value::Int(i16::from_sql(ty, raw)?.into()),
      Type::BOOL => Value::Int(bool::from_sql(ty, raw)?.into()),
      Type::FLOAT8 => Value::Real(f64::from_sql(ty, raw)?),
      Type::FLOAT4 => Value::Real(f32::from_sql(ty, raw)?.into()),
      Type::NUMERIC => {
        use rust_decimal::prelude::ToPrimitive;
        let d = rust_decimal::Decimal::from_sql(ty, raw)?;
        match d.fract().is_zero().then(|| d.to_i64()).flatten() {
          Some(i) => Value::Int(i),
          None => Value::Real(d.to_f64().unwrap_or(f64::NAN)),
        }
      }
      Type::BYTEA => Value::Blob(<Vec<u8>>::from_sql(ty, raw)?),
      _ => Value::Text(String::from_sql(&Type::TEXT, raw)?),
    }))
  }

  fn from_sql_null(_: &Type) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
    Ok(PgValue(Value::Null))
  }

  fn accepts(_: &Type) -> bool {
    true
  }
}

#[cfg(test)]
mod tests {
  use super::*;

  #[test]
  fn placeholders_are_renumbered_outside_quotes() {
    assert_eq!(
      postgres_placeholders("SELECT a FROM t WHERE b = ?2 AND c = '?' AND d = ?1"),
      "SELECT a FROM t WHERE b = $2 AND c = '?' AND d = $1"
    );
    assert_eq!(
      postgres_placeholders("x = ? AND y = ? AND \"q?\" = ?"),
      "x = $1 AND y = $2 AND \"q?\" = $3"
    );
  }

  #[test]
  fn rows_read_with_types_and_say_which_column_is_wrong() {
    let row = Row(vec![Value::Int(3), Value::Null, Value::Text("x".into())]);
    assert_eq!(row.get::<i64>(0).unwrap(), 3);
    assert!(row.get::<bool>(0).unwrap());
    assert_eq!(row.get::<Option<String>>(1).unwrap(), None);
    let err = row.get::<i64>(2).unwrap_err().to_string();
    assert_eq!(err, "column 2: expected an integer, found text");
  }

  /// `execute` on SQLite binds text and blobs in place: each kind of value
  /// arrives as it was given, and a wrong count of parameters is an error.
  #[test]
  fn sqlite_binds_every_kind_of_value_in_place() {
    let conn = rusqlite::Connection::open_in_memory().unwrap();
    let sql = Sql::sqlite(SqliteRef::Borrowed(&conn));
    sql
      .execute_batch("CREATE TABLE t (a, b, c, d, e, f, g)")
      .unwrap();
    let text = String::from("é\0x");
    let blob = vec![0_u8, 255, 7];
    let none: Option<&str> = None;
    let insert = "INSERT INTO t VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)";
    let n = sql
      .execute(
        insert,
        params![text, "lent", blob, -3_i64, 0.5_f64, none, Value::from("v")],
      )
      .unwrap();
    assert_eq!(n, 1);
    let row = sql.query_row("SELECT * FROM t", (), |r| {
      Ok((
        r.get::<String>(0)?,
        r.get::<String>(1)?,
        r.get::<Vec<u8>>(2)?,
        r.get::<i64>(3)?,
        r.get::<f64>(4)?,
        r.get::<Option<String>>(5)?,
        r.get::<String>(6)?,
      ))
    });
    assert_eq!(
      row.unwrap(),
      (text, "lent".into(), blob, -3, 0.5, None, "v".into())
    );
    for wrong in [params![1_i64], params![1_i64, 2, 3, 4, 5, 6, 7, 8]] {
      let err = sql.execute(insert, wrong).unwrap_err();
      assert!(
        matches!(
          err,
          Error::Sqlite(rusqlite::Error::InvalidParameterCount(_, 7))
        ),
        "{err:?}"
      );
    }
  }
}
