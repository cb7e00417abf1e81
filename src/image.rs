//! `berth import-tar` and `berth export-tar` (being written).

use crate::cli::{ExportTarArgs, ImportTarArgs};

pub fn import_tar(_args: ImportTarArgs) -> anyhow::Result<i32> {
    anyhow::bail!("berth import-tar is being written")
}

pub fn export_tar(_args: ExportTarArgs) -> anyhow::Result<i32> {
    anyhow::bail!("berth export-tar is being written")
}
