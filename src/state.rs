//! `berth list`, `berth status` and `berth images` (being written).

use crate::cli::{ListArgs, StatusArgs};

pub fn list(_args: ListArgs) -> anyhow::Result<i32> {
    anyhow::bail!("berth list is being written")
}

pub fn status(_args: StatusArgs) -> anyhow::Result<i32> {
    anyhow::bail!("berth status is being written")
}

pub fn images(_args: ListArgs) -> anyhow::Result<i32> {
    anyhow::bail!("berth images is being written")
}
