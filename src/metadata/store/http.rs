//! http metadata store (placeholder until the metadata-store work lands).

use super::MetadataStore;
use crate::error::{Error, Result};

pub struct HttpStore {
    url: String,
}

impl HttpStore {
    pub fn new(url: &str) -> Result<Self> {
        let _ = url;
        Err(Error::NotImplemented(format!(
            "http metadata store is not supported yet: {url}"
        )))
    }
}

impl MetadataStore for HttpStore {
    fn get(&self, _key: &str) -> Result<Option<String>> {
        Err(Error::NotImplemented(self.url.clone()))
    }
    fn set(&self, _key: &str, _value: &str) -> Result<()> {
        Err(Error::NotImplemented(self.url.clone()))
    }
    fn remove(&self, _key: &str) -> Result<()> {
        Err(Error::NotImplemented(self.url.clone()))
    }
    fn describe(&self) -> String {
        self.url.clone()
    }
}
