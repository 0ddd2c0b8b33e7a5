//! Databases in the throwaway PostgreSQL cluster tests/run.sh starts and
//! names in `BACKUP_TEST_POSTGRES` (a URL of its `postgres` database), and
//! the PostgreSQL side of [`crate::StateDb`].

use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::BytesMut;
use chrono::NaiveDateTime;
use postgres::types::{FromSql, IsNull, ToSql, Type};

use crate::SqlValue;

/// The URL of the cluster's `postgres` database, from
/// `BACKUP_TEST_POSTGRES`; panics if it is not set (run tests/run.sh).
pub fn cluster_url() -> String {
    std::env::var("BACKUP_TEST_POSTGRES").unwrap_or_else(|_| {
        panic!(
            "BACKUP_TEST_POSTGRES names no PostgreSQL server: run tests/run.sh, which starts \
             a throwaway cluster and sets it"
        )
    })
}

/// A new, empty database in the cluster: its URL.
///
/// Panics if `BACKUP_TEST_POSTGRES` is not set (run tests/run.sh), or with
/// `createdb`'s output if it fails.
pub fn new_database() -> String {
    let server = cluster_url();
    static MADE: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let made = MADE.fetch_add(1, Ordering::Relaxed);
    let name = format!("e2e_{}_{nanos}_{made}", std::process::id());
    // libpq takes a URL wherever it takes a database name; tests/run.sh
    // puts the cluster's programs first on the PATH.
    let out = Command::new("createdb")
        .arg(format!("--maintenance-db={server}"))
        .arg(&name)
        .output()
        .expect("run createdb");
    assert!(out.status.success(), "createdb: {out:?}");
    let (cluster, _) = server.rsplit_once('/').expect("a URL with a database");
    format!("{cluster}/{name}")
}

/// [`crate::StateDb::execute`] on PostgreSQL.
pub(crate) fn execute(url: &str, sql: &str, params: &[SqlValue]) -> u64 {
    with_client(url, |client| client.execute(sql, &refs(params)))
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// [`crate::StateDb::query`] on PostgreSQL: each row's cells.
pub(crate) fn query(url: &str, sql: &str, params: &[SqlValue]) -> Vec<Vec<SqlValue>> {
    let rows = with_client(url, |client| client.query(sql, &refs(params)))
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    rows.iter()
        .map(|row| (0..row.len()).map(|i| cell(row, i)).collect())
        .collect()
}

/// Runs `f` on a connection of its own, on a thread of its own: the
/// postgres crate drives the connection with a tokio runtime of its own,
/// which panics if started or dropped on a thread of the test's runtime.
pub fn with_client<T: Send>(
    url: &str,
    f: impl FnOnce(&mut postgres::Client) -> Result<T, postgres::Error> + Send,
) -> Result<T, postgres::Error> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let mut client = postgres::Client::connect(url, postgres::NoTls)?;
                f(&mut client)
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

fn refs(params: &[SqlValue]) -> Vec<&(dyn ToSql + Sync)> {
    params.iter().map(|p| p as &(dyn ToSql + Sync)).collect()
}

/// Cell `i` of `row` by its column's type: the types the migrations
/// create (and what `count(*)` and the like return).
fn cell(row: &postgres::Row, i: usize) -> SqlValue {
    fn read<'a, T: FromSql<'a>>(
        row: &'a postgres::Row,
        i: usize,
        wrap: impl FnOnce(T) -> SqlValue,
    ) -> SqlValue {
        match row.try_get::<_, Option<T>>(i) {
            Ok(value) => value.map_or(SqlValue::Null, wrap),
            Err(e) => panic!("column {}: {e}", row.columns()[i].name()),
        }
    }
    match *row.columns()[i].type_() {
        Type::BOOL => read(row, i, SqlValue::Bool),
        Type::INT2 => read(row, i, |n: i16| SqlValue::Int(n.into())),
        Type::INT4 => read(row, i, |n: i32| SqlValue::Int(n.into())),
        Type::INT8 => read(row, i, SqlValue::Int),
        Type::FLOAT8 => read(row, i, SqlValue::Real),
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME => read(row, i, SqlValue::Text),
        Type::JSON | Type::JSONB => read(row, i, |json: serde_json::Value| {
            SqlValue::Text(json.to_string())
        }),
        Type::TIMESTAMPTZ => read(row, i, SqlValue::Time),
        Type::TIMESTAMP => read(row, i, |at: NaiveDateTime| SqlValue::Time(at.and_utc())),
        ref other => panic!(
            "column {} is a {other}, which StateDb does not read: cast it in the SQL",
            row.columns()[i].name()
        ),
    }
}

/// A parameter as the type PostgreSQL infers for its placeholder: an
/// integer fits any integer column, text a JSON one, a time either
/// timestamp type.
impl ToSql for SqlValue {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match (self, ty) {
            (SqlValue::Null, _) => Ok(IsNull::Yes),
            (SqlValue::Int(n), &Type::INT2) => i16::try_from(*n)?.to_sql(ty, out),
            (SqlValue::Int(n), &Type::INT4) => i32::try_from(*n)?.to_sql(ty, out),
            (SqlValue::Int(n), &Type::INT8) => n.to_sql(ty, out),
            (SqlValue::Real(x), &Type::FLOAT8) => x.to_sql(ty, out),
            (SqlValue::Bool(b), &Type::BOOL) => b.to_sql(ty, out),
            (SqlValue::Text(s), &Type::JSON | &Type::JSONB) => {
                serde_json::from_str::<serde_json::Value>(s)?.to_sql(ty, out)
            }
            (SqlValue::Text(s), _) if <&str as ToSql>::accepts(ty) => s.as_str().to_sql(ty, out),
            (SqlValue::Time(at), &Type::TIMESTAMPTZ) => at.to_sql(ty, out),
            (SqlValue::Time(at), &Type::TIMESTAMP) => at.naive_utc().to_sql(ty, out),
            (value, ty) => Err(format!("{value:?} is no {ty} parameter").into()),
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    postgres::types::to_sql_checked!();
}
