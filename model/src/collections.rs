//! Collection helpers for maps that a node holds one entry per address of the cluster in:
//! the ipcache, the datapath's rows, a watch's known keys. A simulation multiplies every byte
//! of such an entry by every address on every node, so their slack matters.

use std::collections::BTreeMap;

/// Maps smaller than this are never rebuilt: their slack is a few nodes.
pub const COMPACT_MIN: usize = 1024;

/// Rebuilds `map` from its sorted entries once it has grown by a quarter since the last
/// rebuild (`built` holds the length then). Addresses arrive in mostly ascending order, which
/// leaves B-tree nodes about half empty; a map collected from sorted entries has full nodes.
/// The work is O(1) amortized per insert. Call it after each insert.
pub fn compact_grown<K: Ord, V>(map: &mut BTreeMap<K, V>, built: &mut usize) {
    *built = (*built).min(map.len());
    if map.len() >= COMPACT_MIN && map.len() > *built + *built / 4 {
        *map = std::mem::take(map).into_iter().collect();
        *built = map.len();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_grown_map_is_rebuilt_with_the_same_content() {
        let mut map = BTreeMap::new();
        let mut built = 0;
        for i in 0..5000u32 {
            map.insert(i, i * 2);
            compact_grown(&mut map, &mut built);
        }
        assert!(built >= COMPACT_MIN, "rebuilt at least once");
        assert!(
            built > 5000 * 4 / 5,
            "rebuilt after the last quarter of growth: {built}"
        );
        assert_eq!(map.len(), 5000);
        assert!(map.iter().all(|(k, v)| *v == k * 2));
        // Shrinking below the last rebuild lowers the mark, so growth counts from there.
        map.retain(|k, _| *k < 100);
        compact_grown(&mut map, &mut built);
        assert_eq!(built, 100);
    }
}
