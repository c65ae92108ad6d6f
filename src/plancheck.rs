//! The check a backup makes before it writes its snapshot (format §11.4): a prune that marked
//! packs for deletion after this backup loaded its index may delete data the new snapshot
//! relies on. Plans seen when the index was loaded need no check (that index already left their
//! packs out). A plan seen only now was created after the load, so it cannot be due before its
//! grace (`not_before - created`) has passed since then: while the backup's own elapsed time plus
//! [`DUE_MARGIN`] is shorter than that grace, no clock comparison is needed and nothing can be
//! deleted under it. Otherwise the backup stops without writing a snapshot if the plan lists one
//! of its own new packs (checked before its index files are written, so no index ever points at
//! a pack about to go) or a pack holding any blob the snapshot references (checked after).

use std::collections::HashSet;
use std::time::{Duration, Instant, SystemTime};

use serde::Deserialize;

use crate::backend::{FileType, Handle};
use crate::error::{Error, Result};
use crate::id::Id;
use crate::index::IndexPack;
use crate::repo::{Repository, list_ids};
use crate::tree::Extent;

/// Safety added to the backup's elapsed time: the prune's clock may have been
/// [`crate::lease::MAX_SKEW`] off when it wrote `created`, the executing prune's by as much
/// again, and the snapshot still has to be written.
pub const DUE_MARGIN: Duration = Duration::from_secs(15 * 60);

/// The longest a backup may run and still write its snapshot: executed plans are kept this
/// long after `not_before`, so a backup this short always sees a plan that could affect it.
pub const MAX_BACKUP_AGE: Duration = Duration::from_secs(30 * 24 * 3600);

/// The fields of a deletion plan this check needs (format §11.3).
#[derive(Debug, Deserialize)]
struct PlanView {
    created: u64,
    not_before: u64,
    packs: Vec<PlanPack>,
}

#[derive(Debug, Deserialize)]
struct PlanPack {
    id: Id,
}

/// The packs listed by deletion plans that appeared after the index was loaded and may come
/// due before this backup finishes (see the module doc).
pub async fn packs_in_reach(repo: &Repository) -> Result<HashSet<Id>> {
    let Some(loaded) = repo.index_loaded() else { return Ok(HashSet::new()) };
    // The monotonic clock stops while the machine sleeps, the wall clock may be stepped: take
    // the longer of the two.
    let elapsed = Instant::now()
        .saturating_duration_since(loaded.at_instant)
        .max(SystemTime::now().duration_since(loaded.at).unwrap_or_default());
    if elapsed > MAX_BACKUP_AGE {
        return Err(Error::PruneOverlap(
            "this backup ran for more than 30 days; prunes may have removed data it relies on".into(),
        ));
    }
    let new: Vec<Id> = list_ids(&**repo.backend(), FileType::Deletion)
        .await?
        .into_iter()
        .filter(|id| !loaded.plans.contains(id))
        .collect();
    let mut condemned = HashSet::new();
    for id in new {
        let plain = match repo.load_file(FileType::Deletion, &id).await {
            Ok(p) => p,
            // Deleted by a prune after its retention: only plans older than any backup are.
            Err(Error::Backend(e)) if e.is_not_found() => continue,
            Err(e) => return Err(e),
        };
        let plan: PlanView = crate::codec::from_cbor(&plain)
            .map_err(|e| Error::corrupt(Handle::new(FileType::Deletion, id.to_hex()).to_string(), e))?;
        let grace = Duration::from_secs(plan.not_before.saturating_sub(plan.created));
        if elapsed + margin(grace) >= grace {
            condemned.extend(plan.packs.into_iter().map(|p| p.id));
        }
    }
    if !condemned.is_empty() {
        tracing::info!("a prune marked {} packs while this backup ran; checking against them", condemned.len());
    }
    Ok(condemned)
}

/// The allowance for clocks and uploads: [`DUE_MARGIN`], or half the grace when that is
/// shorter (graces under 30 minutes are safe only where all machines share one clock).
pub fn margin(grace: Duration) -> Duration {
    DUE_MARGIN.min(grace / 2)
}

/// Before the backup indexes its new packs: fails if a prune marked one of them (it listed
/// them as unindexed), since indexing a pack that may be deleted would mislead later backups.
pub fn check_new_packs(condemned: &HashSet<Id>, packs: &[IndexPack]) -> Result<()> {
    match packs.iter().find(|p| condemned.contains(&p.id)) {
        Some(p) => Err(Error::PruneOverlap(format!(
            "a prune marked pack {} that this backup uploaded, before its index was written",
            p.id.short()
        ))),
        None => Ok(()),
    }
}

/// Before the snapshot is written: fails if any blob reachable from `root` lies in a
/// condemned pack.
pub async fn check_snapshot(repo: &Repository, root: &Id, condemned: &HashSet<Id>) -> Result<()> {
    if condemned.is_empty() {
        return Ok(());
    }
    if let Some(blob) = first_blob_in(repo, root, condemned).await? {
        return Err(Error::PruneOverlap(format!(
            "a prune marked for deletion a pack holding blob {} that this backup relies on",
            blob.short()
        )));
    }
    Ok(())
}

/// Whether blob `id` lies in one of `packs`, or is no longer indexed at all: the local cache
/// is shared with other processes and follows the repository, so a blob the backup found
/// earlier may since have been dropped with the packs a prune marked.
fn in_packs(repo: &Repository, id: &Id, packs: &HashSet<Id>) -> Result<bool> {
    Ok(repo.index().get(id)?.is_none_or(|loc| packs.contains(&loc.pack)))
}

/// The first blob reachable from `root` (trees and data) that lies in one of `packs`.
async fn first_blob_in(repo: &Repository, root: &Id, packs: &HashSet<Id>) -> Result<Option<Id>> {
    let mut seen = HashSet::new();
    let mut todo = vec![*root];
    while let Some(tree_id) = todo.pop() {
        if !seen.insert(tree_id) {
            continue;
        }
        if in_packs(repo, &tree_id, packs)? {
            return Ok(Some(tree_id));
        }
        let tree = repo.load_tree(&tree_id).await?;
        for node in &tree.nodes {
            todo.extend(node.subtree);
            for extent in &node.content {
                if let Extent::Data(id) = extent
                    && seen.insert(*id)
                    && in_packs(repo, id, packs)?
                {
                    return Ok(Some(*id));
                }
            }
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn margin_is_fifteen_minutes_or_half_a_short_grace() {
        assert_eq!(margin(Duration::from_secs(24 * 3600)), DUE_MARGIN);
        assert_eq!(margin(Duration::from_secs(4)), Duration::from_secs(2));
        assert_eq!(margin(Duration::ZERO), Duration::ZERO);
    }

    #[test]
    fn a_marked_new_pack_stops_the_backup_before_its_index() {
        let packs = vec![IndexPack { id: Id([1; 32]), blobs: vec![] }, IndexPack { id: Id([2; 32]), blobs: vec![] }];
        assert!(check_new_packs(&HashSet::from([Id([3; 32])]), &packs).is_ok());
        let err = check_new_packs(&HashSet::from([Id([2; 32])]), &packs).unwrap_err();
        assert!(matches!(err, Error::PruneOverlap(_)), "{err}");
    }
}
