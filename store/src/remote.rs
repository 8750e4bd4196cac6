//! Tables on an object store (`storage.url`: S3, Google Cloud Storage, Azure Blob): the store built from the URL and
//! each cloud's standard environment variables and credential chain (object_store's builders' `from_env`), and the
//! uploads and deletions of a flush's files.
//!
//! Commits on an object store are delta-rs's default log store: the log entry `N.json` is written with
//! `PutMode::Create`, which object_store sends to S3 as a conditional write (`If-None-Match: *`, its default
//! `S3ConditionalPut::ETagMatch`), to Azure as `If-None-Match: *` and to GCS as `x-goog-if-generation-match: 0`: of
//! two writers racing for one version, the store lets one win and the other reads the log again and takes the next.

use std::path::Path;
use std::sync::Arc;

use deltalake_core::logstore::object_store::aws::AmazonS3Builder;
use deltalake_core::logstore::object_store::azure::MicrosoftAzureBuilder;
use deltalake_core::logstore::object_store::buffered::BufWriter;
use deltalake_core::logstore::object_store::gcp::GoogleCloudStorageBuilder;
use deltalake_core::logstore::object_store::{self, ObjectStore, ObjectStoreExt as _};
use deltalake_core::logstore::{LogStoreRef, StorageConfig, default_logstore};
use tailscope_core::catalog::RemoteTables;
use tailscope_core::schema::Signal;
use tokio::io::AsyncWriteExt as _;
use url::Url;

use crate::StoreError;

/// What to check when a store does not answer as it should: said with every error of a store.
const HINT: &str = "check that the store is reachable and that the credentials in the environment may read, write \
                    and delete there (docs/storage.md, per cloud); the flush is retried and nothing acknowledged is \
                    lost meanwhile";

/// Connects to the store `url` names (`storage.url`, checked by the config already), with the credentials of the
/// environment: `AWS_*` for `s3://`, `GOOGLE_*` for `gs://`, `AZURE_*` for `az://` and `abfs[s]://`. Connecting
/// does not reach the store: the first table opened does.
pub fn connect(text: &str) -> Result<RemoteTables, StoreError> {
    let url = tailscope_core::config::storage_url(text)
        .map_err(|e| StoreError::Connect { url: text.to_string(), detail: e.to_string() })?;
    let failed = |e: object_store::Error| StoreError::Connect {
        url: text.to_string(),
        detail: format!("{e}; set the cloud's environment variables (docs/storage.md)"),
    };
    let store: Arc<dyn ObjectStore> = match url.scheme() {
        "s3" | "s3a" => Arc::new(AmazonS3Builder::from_env().with_url(url.as_str()).build().map_err(failed)?),
        "gs" => Arc::new(GoogleCloudStorageBuilder::from_env().with_url(url.as_str()).build().map_err(failed)?),
        "az" | "abfs" | "abfss" => {
            Arc::new(MicrosoftAzureBuilder::from_env().with_url(url.as_str()).build().map_err(failed)?)
        }
        other => {
            return Err(StoreError::Connect {
                url: text.to_string(),
                detail: format!("no object store for {other}://"),
            });
        }
    };
    let prefix = url.path().trim_matches('/').to_string();
    let mut base = url.clone();
    base.set_path(&prefix);
    Ok(RemoteTables { url: base, store, prefix })
}

/// Connects to the store of a placement rule (`url` of `[[storage.placement]]`, checked by the config already): an
/// object store as [`connect`], or a local directory (an absolute path or `file://` URL), used through
/// object_store's local file system like a bucket, so that a flush uploads to it and commits there the same way.
pub fn connect_placement(text: &str) -> Result<RemoteTables, StoreError> {
    let url = tailscope_core::placement::store_url(text)
        .map_err(|detail| StoreError::Connect { url: text.to_string(), detail })?;
    if url.scheme() != "file" {
        return connect(text);
    }
    let path = url
        .to_file_path()
        .map_err(|()| StoreError::Connect { url: text.to_string(), detail: "not a local directory path".into() })?;
    // delta-rs opens a table on a local path only when its directory exists (an object store has no directories).
    for signal in Signal::ALL {
        let dir = path.join(signal.table_name());
        std::fs::create_dir_all(&dir).map_err(|e| StoreError::Connect {
            url: text.to_string(),
            detail: format!("cannot create the directory {}: {e}", dir.display()),
        })?;
    }
    let store: Arc<dyn ObjectStore> = Arc::new(object_store::local::LocalFileSystem::new());
    let prefix = url.path().trim_matches('/').to_string();
    let mut base = url.clone();
    base.set_path(&format!("/{prefix}"));
    Ok(RemoteTables { url: base, store, prefix })
}

/// The URL of `signal`'s table on `remote` (`s3://bucket/prefix/spans/`).
pub(crate) fn table_url(remote: &RemoteTables, signal: Signal) -> Result<Url, StoreError> {
    let mut url = remote.url.clone();
    let path = if remote.prefix.is_empty() {
        format!("/{}/", signal.table_name())
    } else {
        format!("/{}/{}/", remote.prefix, signal.table_name())
    };
    url.set_path(&path);
    Ok(url)
}

/// delta-rs's default log store for the table at `url` on `remote`'s store (commits with `PutMode::Create`).
pub(crate) fn log_store(remote: &RemoteTables, url: &Url) -> Result<LogStoreRef, deltalake_core::DeltaTableError> {
    let config = StorageConfig::default();
    let prefixed: Arc<dyn ObjectStore> = Arc::from(config.decorate_store(remote.store.clone(), url)?);
    Ok(default_logstore(prefixed, remote.store.clone(), url, &config))
}

/// Copies the local file `local` to the object of `relative_path` on `remote` (multipart past 10 MiB, through
/// object_store's buffered writer), and returns the bytes sent.
pub async fn upload(remote: &RemoteTables, local: &Path, relative_path: &Path) -> Result<u64, StoreError> {
    let object = remote.object_path(relative_path);
    let error = |action: &'static str| {
        let object = remote.display(relative_path);
        let store = remote.url.to_string();
        move |detail: String| StoreError::Object { store, object, action, detail, hint: HINT }
    };
    let mut file = tokio::fs::File::open(local)
        .await
        .map_err(|e| error("reading the local copy of")(format!("{}: {e}", local.display())))?;
    let mut writer = BufWriter::new(remote.store.clone(), object);
    let copied = match tokio::io::copy(&mut file, &mut writer).await {
        Ok(n) => n,
        Err(e) => {
            // An unfinished multipart upload is aborted, so the store keeps no parts of it.
            let _ = writer.abort().await;
            return Err(error("uploading")(e.to_string()));
        }
    };
    writer.shutdown().await.map_err(|e| error("uploading")(e.to_string()))?;
    Ok(copied)
}

/// Copies the object of `relative_path` on `remote` to the local file `local` (its directories created), streamed
/// chunk by chunk, never whole in memory. `expected` is its size as the table's log says: an object that turns
/// out larger is refused once past it (a store's answer sizes nothing here), so the copy never exceeds what the
/// log promised. Returns the bytes copied.
pub async fn download(
    remote: &RemoteTables,
    relative_path: &Path,
    local: &Path,
    expected: u64,
) -> Result<u64, StoreError> {
    use futures::StreamExt as _;
    let fail = |detail: String| StoreError::Object {
        store: remote.url.to_string(),
        object: remote.display(relative_path),
        action: "downloading",
        detail,
        hint: HINT,
    };
    if let Some(dir) = local.parent() {
        tokio::fs::create_dir_all(dir).await.map_err(|e| fail(format!("creating {}: {e}", dir.display())))?;
    }
    let answer = remote.store.get(&remote.object_path(relative_path)).await.map_err(|e| fail(e.to_string()))?;
    let mut chunks = answer.into_stream();
    let mut file =
        tokio::fs::File::create(local).await.map_err(|e| fail(format!("creating {}: {e}", local.display())))?;
    let mut copied = 0u64;
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.map_err(|e| fail(e.to_string()))?;
        copied = copied.saturating_add(chunk.len() as u64);
        if copied > expected {
            return Err(fail(format!("the object is larger than the {expected} bytes the table's log says")));
        }
        file.write_all(&chunk).await.map_err(|e| fail(format!("writing {}: {e}", local.display())))?;
    }
    file.flush().await.map_err(|e| fail(format!("writing {}: {e}", local.display())))?;
    Ok(copied)
}

/// Deletes the object of `relative_path` on `remote` (gone already is fine). Returns whether it was there.
pub async fn delete(remote: &RemoteTables, relative_path: &Path) -> Result<bool, StoreError> {
    match remote.store.delete(&remote.object_path(relative_path)).await {
        Ok(()) => Ok(true),
        Err(object_store::Error::NotFound { .. }) => Ok(false),
        Err(e) => Err(StoreError::Object {
            store: remote.url.to_string(),
            object: remote.display(relative_path),
            action: "deleting",
            detail: e.to_string(),
            hint: HINT,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tables, their files and DataFusion's store key all follow the configured bucket and prefix, with or
    /// without a trailing slash (connecting reaches no server).
    #[test]
    fn table_urls_and_object_paths_follow_the_configured_prefix() {
        for text in ["s3://bucket/team/prod", "s3://bucket/team/prod/"] {
            let remote = connect(text).unwrap();
            assert_eq!((remote.url.as_str(), remote.prefix.as_str()), ("s3://bucket/team/prod", "team/prod"));
            assert_eq!(table_url(&remote, Signal::Spans).unwrap().as_str(), "s3://bucket/team/prod/spans/");
            assert_eq!(remote.store_url(), "s3://bucket");
            let file = Path::new("spans/project=a/date=2026-12-03/hour=14/x.parquet");
            assert_eq!(
                remote.object_path(file).as_ref(),
                "team/prod/spans/project=a/date=2026-12-03/hour=14/x.parquet"
            );
            assert_eq!(remote.display(file), "s3://bucket/team/prod/spans/project=a/date=2026-12-03/hour=14/x.parquet");
        }
        let root = connect("s3://bucket").unwrap();
        assert_eq!(root.prefix, "");
        assert_eq!(table_url(&root, Signal::Logs).unwrap().as_str(), "s3://bucket/logs/");
        assert_eq!(root.object_path(Path::new("logs/x.parquet")).as_ref(), "logs/x.parquet");
        let err = connect("ftp://bucket/x").unwrap_err().to_string();
        assert!(err.contains("ftp://bucket/x") && err.contains("scheme"), "{err}");
    }
}
