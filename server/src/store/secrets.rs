//! Named server secrets in the state store: generated once, shared by
//! every process on the store.

use sea_orm::{ActiveModelTrait, ConnectionTrait, EntityTrait, Set};

use super::entity::secret::{self, Entity};
use crate::error::{Error, Result};

/// The secret `name`, created from `generate` if there is none yet. Run it
/// in a write transaction, so two processes starting together agree.
pub async fn get_or_create<C: ConnectionTrait>(
    conn: &C,
    name: &str,
    generate: impl FnOnce() -> Vec<u8>,
) -> Result<Vec<u8>> {
    if let Some(row) = Entity::find_by_id(name).one(conn).await? {
        return hex::decode(row.value)
            .map_err(|_| Error::Internal(format!("the stored secret {name:?} is not hex")));
    }
    let value = generate();
    secret::ActiveModel {
        name: Set(name.to_owned()),
        value: Set(hex::encode(&value)),
    }
    .insert(conn)
    .await?;
    Ok(value)
}
