//! A demo source database with sample rows, so a fresh machine has
//! something real to back up. Never touches an existing file.

use std::path::Path;

use rusqlite::Connection;

use crate::error::Result;

/// Creates `path` as a SQLite database in WAL mode with `customers` and
/// `orders` tables holding `rows` orders. Returns false, touching nothing,
/// if something already exists at `path`.
pub fn create(path: &Path, rows: u32) -> Result<bool> {
    if std::fs::symlink_metadata(path).is_ok() {
        return Ok(false);
    }
    let mut conn = Connection::open(path)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    let txn = conn.transaction()?;
    txn.execute_batch(
        "CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT NOT NULL, email TEXT NOT NULL UNIQUE);
         CREATE TABLE orders (id INTEGER PRIMARY KEY, customer_id INTEGER NOT NULL REFERENCES customers(id),
                              amount_cents INTEGER NOT NULL, created_at TEXT NOT NULL);
         CREATE INDEX orders_by_customer ON orders(customer_id);",
    )?;
    {
        let mut customer =
            txn.prepare("INSERT INTO customers (id, name, email) VALUES (?1, ?2, ?3)")?;
        for id in 1..=100 {
            customer.execute((
                id,
                format!("Customer {id}"),
                format!("customer{id}@example.com"),
            ))?;
        }
        let mut order = txn.prepare(
            "INSERT INTO orders (customer_id, amount_cents, created_at) VALUES (?1, ?2, datetime('now', ?3))",
        )?;
        for n in 0..rows {
            order.execute((
                1 + n % 100,
                100 + (n * 37) % 10_000,
                format!("-{n} minutes"),
            ))?;
        }
    }
    txn.commit()?;
    Ok(true)
}
