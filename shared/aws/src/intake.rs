//! What the controller needs to take in events beyond its three ports: which accounts and sources
//! it accepts events from, and how it learns what an Image Builder build produced.

use crate::error::{Error, Result};
use phoenix_core::aws_events::SourcePolicy;
use phoenix_core::images::ImageBuild;
use phoenix_core::ImageId;
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Image Builder's answer about a build: its AMIs, pipeline and recipe. An `Image Builder Image
/// State Change` event names only the build version ARN.
pub trait ImageResolver: Send + Sync {
    fn resolve<'a>(&'a self, build_version_arn: &'a str) -> BoxFuture<'a, Result<ImageBuild>>;
}

/// The Image Builder port's adapter: `GetImage`.
#[derive(Clone, Debug)]
pub struct ImageBuilderResolver {
    client: aws_sdk_imagebuilder::Client,
}

impl ImageBuilderResolver {
    pub fn new(client: aws_sdk_imagebuilder::Client) -> Self {
        ImageBuilderResolver { client }
    }
}

impl ImageResolver for ImageBuilderResolver {
    fn resolve<'a>(&'a self, arn: &'a str) -> BoxFuture<'a, Result<ImageBuild>> {
        Box::pin(async move {
            let out = self
                .client
                .get_image()
                .image_build_version_arn(arn)
                .send()
                .await
                .map_err(|e| Error::from_sdk("imagebuilder", e))?;
            let image = out
                .image
                .ok_or_else(|| Error::NotFound(format!("Image Builder knows no image {arn}")))?;
            let amis = image
                .output_resources
                .and_then(|r| r.amis)
                .unwrap_or_default()
                .into_iter()
                .filter_map(|a| Some((a.region?, ImageId::parse(a.image.as_deref()?).ok()?)))
                .collect();
            Ok(ImageBuild {
                arn: arn.to_string(),
                amis,
                pipeline: image.source_pipeline_arn,
                recipe: image.image_recipe.and_then(|r| r.arn),
            })
        })
    }
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

/// The controller's intake settings.
#[derive(Clone)]
pub struct Intake {
    /// Accounts and sources events are accepted from.
    pub policy: SourcePolicy,
    pub images: Arc<dyn ImageResolver>,
}

impl Default for Intake {
    /// Any account, every known source, no Image Builder (builds must be registered).
    fn default() -> Self {
        Intake {
            policy: SourcePolicy::default(),
            images: Arc::new(StaticImageResolver::default()),
        }
    }
}

impl std::fmt::Debug for Intake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Intake")
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl Intake {
    /// `PHOENIX_ALLOWED_ACCOUNTS` and `PHOENIX_ALLOWED_SOURCES` (comma-separated; empty: any
    /// account, every known source) and the Image Builder client.
    pub fn from_env(sdk: &aws_config::SdkConfig) -> Self {
        let var = |k: &str| std::env::var(k).unwrap_or_default();
        Intake {
            policy: SourcePolicy::from_lists(
                &var("PHOENIX_ALLOWED_ACCOUNTS"),
                &var("PHOENIX_ALLOWED_SOURCES"),
            ),
            images: Arc::new(ImageBuilderResolver::new(
                aws_sdk_imagebuilder::Client::new(sdk),
            )),
        }
    }
}
