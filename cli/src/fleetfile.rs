//! Reading fleet files: errors name the file, and (from `FleetSpec::from_yaml`) the field and the
//! line it is on.

use anyhow::{anyhow, Result};
use phoenix_core::model::FleetSpec;
use std::path::Path;

pub fn read(path: &Path) -> Result<FleetSpec> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow!("cannot read {}: {e}", path.display()))?;
    FleetSpec::from_yaml(&text).map_err(|e| anyhow!("{}: {e}", path.display()))
}
