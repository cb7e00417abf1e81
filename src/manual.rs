//! Man pages and shell completions, generated from the code (being written).

use crate::cli::GenerateArgs;

pub fn generate(_args: GenerateArgs) -> anyhow::Result<i32> {
    anyhow::bail!("berth generate is being written")
}
