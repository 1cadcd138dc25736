//! Typed access to one prefix of the kvstore: encode on write, decode on read, and a watch that
//! turns raw key events into typed upserts and deletes.
//!
//! Values come from other clusters and other releases, so decoding is defensive: a value that
//! does not decode is reported (as an [`Error::Decode`] naming the key, or a `tracing` warning
//! in a watch) and skipped; it never stops a listing or a watch.

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;

use futures::{Stream, StreamExt};

use crate::backend::{Backend, KeyValue, LeaseId, Revision, WatchEvent, WatchFrom};
use crate::error::Error;

/// A value stored under a prefix, one key per value.
pub trait StoreValue: Sized + Send + 'static {
    /// The key below the prefix (upstream's `GetKeyName`), e.g. `<cluster>/<name>` for a node.
    fn key_name(&self) -> String;

    /// The bytes upstream would write for this value.
    fn encode(&self) -> Result<Vec<u8>, serde_json::Error>;

    /// Decodes bytes written by us or by upstream; the error says what is wrong.
    fn decode(data: &[u8]) -> Result<Self, String>;
}

/// One change seen by [`TypedStore::watch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TypedEvent<T> {
    /// The value under a key was created or replaced.
    Upsert(T),
    /// The key with this name (below the prefix) was deleted.
    Delete(String),
    /// The initial listing is complete: the consumer holds the full state of the prefix.
    Synced,
}

/// A typed view of every key below `prefix/`.
pub struct TypedStore<T> {
    backend: Arc<dyn Backend>,
    prefix: String,
    _values: PhantomData<fn() -> T>,
}

impl<T> fmt::Debug for TypedStore<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TypedStore")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl<T> Clone for TypedStore<T> {
    fn clone(&self) -> Self {
        TypedStore {
            backend: Arc::clone(&self.backend),
            prefix: self.prefix.clone(),
            _values: PhantomData,
        }
    }
}

impl<T: StoreValue> TypedStore<T> {
    /// A store for the keys below `prefix` (given without a trailing `/`, e.g.
    /// [`super::NODES_PREFIX`] or a kvstoremesh cache prefix from [`super::state_to_cache_prefix`]).
    pub fn new(backend: Arc<dyn Backend>, prefix: impl Into<String>) -> Self {
        let mut prefix = prefix.into();
        while prefix.ends_with('/') {
            prefix.pop();
        }
        TypedStore {
            backend,
            prefix,
            _values: PhantomData,
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The full key of the value named `name`.
    pub fn key(&self, name: &str) -> String {
        format!("{}/{}", self.prefix, name)
    }

    /// Writes `value` under its key name, attached to `lease` if given.
    pub async fn upsert(&self, value: &T, lease: Option<LeaseId>) -> Result<Revision, Error> {
        let data = value.encode().map_err(encode_error)?;
        self.backend
            .put(&self.key(&value.key_name()), data, lease)
            .await
    }

    /// Deletes the value named `name`. Returns whether it existed.
    pub async fn delete(&self, name: &str) -> Result<bool, Error> {
        self.backend.delete(&self.key(name)).await
    }

    /// Reads the value named `name`.
    pub async fn get(&self, name: &str) -> Result<Option<T>, Error> {
        match self.backend.get(&self.key(name)).await? {
            None => Ok(None),
            Some(kv) => decode_value(&kv, T::decode).map(Some),
        }
    }

    /// Reads every value of the prefix. Values that do not decode are returned as errors next
    /// to the ones that do; only a failure of the store itself fails the call.
    pub async fn list(&self) -> Result<(Vec<T>, Vec<Error>), Error> {
        let listing = self
            .backend
            .list_prefix(&format!("{}/", self.prefix))
            .await?;
        let mut values = Vec::with_capacity(listing.kvs.len());
        let mut errors = Vec::new();
        for kv in &listing.kvs {
            match decode_value(kv, T::decode) {
                Ok(value) => values.push(value),
                Err(err) => errors.push(err),
            }
        }
        Ok((values, errors))
    }

    /// Lists the prefix, then follows it: one [`TypedEvent::Upsert`] per existing value, then
    /// [`TypedEvent::Synced`], then every change. A value that does not decode is skipped with
    /// a warning naming the key. An `Err` item is the backend's final error (the stream ends
    /// after it); dropping the stream cancels the watch.
    pub async fn watch(
        &self,
    ) -> Result<impl Stream<Item = Result<TypedEvent<T>, Error>> + Send + use<T>, Error> {
        let prefix = format!("{}/", self.prefix);
        let events = self.backend.watch(&prefix, WatchFrom::List).await?;
        Ok(events.filter_map(move |event| {
            let typed = match event {
                Err(err) => Some(Err(err)),
                Ok(WatchEvent::ListDone { .. }) => Some(Ok(TypedEvent::Synced)),
                Ok(WatchEvent::Delete { key, .. }) => key
                    .strip_prefix(&prefix)
                    .map(|name| Ok(TypedEvent::Delete(name.to_owned()))),
                Ok(WatchEvent::Create(kv) | WatchEvent::Modify(kv)) => {
                    match decode_value(&kv, T::decode) {
                        Ok(value) => Some(Ok(TypedEvent::Upsert(value))),
                        Err(err) => {
                            tracing::warn!(key = %kv.key, error = %err, "skipping undecodable kvstore value");
                            None
                        }
                    }
                }
            };
            futures::future::ready(typed)
        }))
    }
}

/// Decodes the value of `kv`, naming the key in the error.
pub(crate) fn decode_value<T>(
    kv: &KeyValue,
    decode: impl FnOnce(&[u8]) -> Result<T, String>,
) -> Result<T, Error> {
    decode(&kv.value).map_err(|message| Error::Decode {
        key: kv.key.clone(),
        message,
    })
}

/// Serialising our own value types cannot fail (no maps with non-string keys, no fallible
/// `Serialize` impls), but the API is fallible; report it as a failed operation.
pub(crate) fn encode_error(err: serde_json::Error) -> Error {
    Error::Backend {
        op: "encode",
        message: err.to_string(),
    }
}
