//! The Image Builder port: an `Image Builder Image State Change` event names only the build
//! version ARN; what it produced (AMIs per region, pipeline, recipe) is asked of Image Builder.

use crate::error::{Error, Result};
use phoenix_core::images::ImageBuild;
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Image Builder's answer about a build (`GetImage` in AWS).
pub trait ImageResolver: Send + Sync {
    fn resolve<'a>(&'a self, build_version_arn: &'a str) -> BoxFuture<'a, Result<ImageBuild>>;
}

/// Builds known in advance: the local emulator has no Image Builder, so tests (and the local
/// stack) register the builds their events name. Clones share the same builds.
#[derive(Clone, Debug, Default)]
pub struct StaticImageResolver {
    builds: Arc<Mutex<BTreeMap<String, ImageBuild>>>,
}

impl StaticImageResolver {
    pub fn add(&self, build: ImageBuild) {
        if let Ok(mut builds) = self.builds.lock() {
            builds.insert(build.arn.clone(), build);
        }
    }
}

impl ImageResolver for StaticImageResolver {
    fn resolve<'a>(&'a self, arn: &'a str) -> BoxFuture<'a, Result<ImageBuild>> {
        let found = self
            .builds
            .lock()
            .ok()
            .and_then(|builds| builds.get(arn).cloned());
        Box::pin(async move {
            found.ok_or_else(|| Error::NotFound(format!("Image Builder knows no image {arn}")))
        })
    }
}
