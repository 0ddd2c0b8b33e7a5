//! PLACEHOLDER until the retention branch lands (not committed).
use crate::error::Result;
pub struct Retention;
impl Retention {
    pub async fn apply_for_owner(
        &self,
        _owner_user_id: i64,
        _keep_count: u32,
    ) -> Result<Vec<String>> {
        Ok(Vec::new())
    }
}
