//! TEMP stub
use super::context::Device;
use crate::error::{Error, Result};
use std::sync::Arc;
pub fn selected() -> &'static str {
    "none"
}
pub fn discover() -> Vec<String> {
    Vec::new()
}
pub fn open(name: &str, _cq_depth: usize) -> Result<Arc<dyn Device>> {
    Err(Error::DeviceNotFound(name.into()))
}
