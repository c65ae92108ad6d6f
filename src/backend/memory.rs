//! The in-memory backend: a map from handle to bytes, for tests and for the conformance suite's
//! reference behaviour. It owns nothing on disk and forgets everything when dropped.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use async_trait::async_trait;
use bytes::Bytes;

use super::{Backend, BackendError, FileInfo, FileType, Handle, PutMode, check_handle, check_range};

/// A backend that keeps every object in memory.
#[derive(Debug, Default)]
pub struct MemoryBackend {
    // A std lock is enough: it is never held across an await.
    objects: RwLock<BTreeMap<Handle, Bytes>>,
}

impl MemoryBackend {
    /// An empty backend.
    pub fn new() -> Self {
        Self::default()
    }

    // A panic while holding the lock cannot leave the map half-updated (every update is a single
    // insert or remove), so a poisoned lock is still safe to use.
    fn read(&self) -> RwLockReadGuard<'_, BTreeMap<Handle, Bytes>> {
        self.objects.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, BTreeMap<Handle, Bytes>> {
        self.objects.write().unwrap_or_else(|e| e.into_inner())
    }
}

#[async_trait]
impl Backend for MemoryBackend {
    fn location(&self) -> String {
        "memory".to_owned()
    }

    fn connections(&self) -> usize {
        8
    }

    async fn create(&self) -> Result<(), BackendError> {
        Ok(())
    }

    async fn put(&self, h: &Handle, data: Bytes, mode: PutMode) -> Result<(), BackendError> {
        check_handle(h)?;
        // Check and insert under one write lock, so concurrent create-only puts have one winner.
        let mut objects = self.write();
        if mode == PutMode::CreateOnly && objects.contains_key(h) {
            return Err(BackendError::AlreadyExists(h.clone()));
        }
        objects.insert(h.clone(), data);
        Ok(())
    }

    async fn get(&self, h: &Handle, range: Option<Range<u64>>) -> Result<Bytes, BackendError> {
        check_handle(h)?;
        let data = self.read().get(h).cloned().ok_or_else(|| BackendError::NotFound(h.clone()))?;
        match range {
            None => Ok(data),
            Some(r) => {
                check_range(h, &r, data.len() as u64)?;
                // In bounds of a `usize`-length buffer, so the casts cannot truncate.
                Ok(data.slice(r.start as usize..r.end as usize))
            }
        }
    }

    async fn stat(&self, h: &Handle) -> Result<FileInfo, BackendError> {
        check_handle(h)?;
        let size = self.read().get(h).map(|d| d.len() as u64).ok_or_else(|| BackendError::NotFound(h.clone()))?;
        Ok(FileInfo { handle: h.clone(), size, modified: None })
    }

    async fn list(&self, tpe: FileType) -> Result<Vec<FileInfo>, BackendError> {
        Ok(self
            .read()
            .iter()
            .filter(|(h, _)| h.tpe == tpe)
            .map(|(h, d)| FileInfo { handle: h.clone(), size: d.len() as u64, modified: None })
            .collect())
    }

    async fn delete(&self, h: &Handle) -> Result<(), BackendError> {
        check_handle(h)?;
        match self.write().remove(h) {
            Some(_) => Ok(()),
            None => Err(BackendError::NotFound(h.clone())),
        }
    }
}
