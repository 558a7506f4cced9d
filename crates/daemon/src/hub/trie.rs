//! The subscription index: a level trie of patterns, so that finding who
//! subscribes to a channel costs what matches, not what is held.
//!
//! One node per level, as in Mosquitto and NATS: literal levels are children
//! by name, `+` is one child edge and a trailing `#` is a list on the node
//! it follows. Matching a channel walks its levels, following at each node
//! the literal child of that level and the `+` child; the nodes visited are
//! prefixes of held patterns that match a prefix of the channel, so patterns
//! under other literal levels are never looked at.

use super::{ClientId, HashMap};

/// Every client's patterns, indexed by level.
#[derive(Default)]
pub(super) struct SubTrie {
    root: Node,
}

#[derive(Default)]
struct Node {
    /// Children for literal levels.
    literal: HashMap<Box<str>, Node>,
    /// The child for a `+` level.
    plus: Option<Box<Node>>,
    /// Clients whose pattern ends at this node.
    here: Vec<ClientId>,
    /// Clients whose pattern ends with a `#` after this node: they match
    /// this node's channel and everything below it.
    hash: Vec<ClientId>,
}

impl Node {
    fn is_empty(&self) -> bool {
        self.literal.is_empty()
            && self.plus.is_none()
            && self.here.is_empty()
            && self.hash.is_empty()
    }
}

impl SubTrie {
    /// Index `pattern` (validated) for `id`. The caller never indexes one
    /// client's pattern twice.
    pub(super) fn insert(&mut self, pattern: &str, id: ClientId) {
        let mut node = &mut self.root;
        for level in pattern.split('/') {
            match level {
                "#" => {
                    node.hash.push(id);
                    return;
                }
                "+" => node = node.plus.get_or_insert_with(Default::default),
                lit => {
                    // Look up first: the common case allocates nothing.
                    if !node.literal.contains_key(lit) {
                        node.literal.insert(lit.into(), Node::default());
                    }
                    node = node.literal.get_mut(lit).expect("just inserted");
                }
            }
        }
        node.here.push(id);
    }

    /// Forget `id`'s `pattern`; nodes left empty are pruned, so the trie
    /// never holds more than the patterns held now.
    pub(super) fn remove(&mut self, pattern: &str, id: ClientId) -> bool {
        let levels: Vec<&str> = pattern.split('/').collect();
        remove_at(&mut self.root, &levels, id)
    }

    /// Append to `out` every client with a pattern matching `channel` (a
    /// valid name), once per matching pattern: the caller deduplicates.
    pub(super) fn matches(&self, channel: &str, out: &mut Vec<ClientId>) {
        let mut levels = [""; crate::wire::channel::MAX_LEVELS];
        let mut n = 0;
        for level in channel.split('/') {
            if n == levels.len() {
                return; // not a valid name: matches nothing
            }
            levels[n] = level;
            n += 1;
        }
        match_at(&self.root, &levels[..n], out);
    }
}

fn match_at(node: &Node, levels: &[&str], out: &mut Vec<ClientId>) {
    // `x/#` matches `x` itself and everything below it.
    out.extend_from_slice(&node.hash);
    let Some((first, rest)) = levels.split_first() else {
        out.extend_from_slice(&node.here);
        return;
    };
    if let Some(child) = node.literal.get(*first) {
        match_at(child, rest, out);
    }
    if let Some(child) = node.plus.as_deref() {
        match_at(child, rest, out);
    }
}

fn remove_at(node: &mut Node, levels: &[&str], id: ClientId) -> bool {
    let take = |list: &mut Vec<ClientId>| match list.iter().position(|c| *c == id) {
        Some(i) => {
            list.swap_remove(i);
            true
        }
        None => false,
    };
    let Some((first, rest)) = levels.split_first() else {
        return take(&mut node.here);
    };
    match *first {
        "#" => take(&mut node.hash),
        "+" => {
            let Some(child) = node.plus.as_deref_mut() else {
                return false;
            };
            let found = remove_at(child, rest, id);
            if child.is_empty() {
                node.plus = None;
            }
            found
        }
        lit => {
            let Some(child) = node.literal.get_mut(lit) else {
                return false;
            };
            let found = remove_at(child, rest, id);
            if child.is_empty() {
                node.literal.remove(lit);
            }
            found
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::Pattern;
    use proptest::prelude::*;

    /// The matcher the trie replaced: every pattern of every client.
    fn linear(subs: &[(ClientId, Pattern)], channel: &str) -> Vec<ClientId> {
        let mut v: Vec<ClientId> = subs
            .iter()
            .filter(|(_, p)| p.matches(channel))
            .map(|(c, _)| *c)
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    fn indexed(t: &SubTrie, channel: &str) -> Vec<ClientId> {
        let mut v = Vec::new();
        t.matches(channel, &mut v);
        v.sort_unstable();
        v.dedup();
        v
    }

    // A small alphabet, so that patterns and channels actually meet.
    fn level() -> impl Strategy<Value = String> {
        prop_oneof!["a", "b", "c", "ab"].prop_map(String::from)
    }

    fn channel() -> impl Strategy<Value = String> {
        prop::collection::vec(level(), 1..5).prop_map(|l| l.join("/"))
    }

    fn pattern() -> impl Strategy<Value = String> {
        (
            prop::collection::vec(prop_oneof![3 => level(), 1 => Just("+".to_string())], 0..5),
            any::<bool>(),
        )
            .prop_filter_map("empty pattern", |(mut l, hash)| {
                if hash {
                    l.push("#".into());
                }
                (!l.is_empty()).then(|| l.join("/"))
            })
    }

    proptest! {
        #[test]
        fn trie_matches_exactly_what_the_linear_matcher_did(
            subs in prop::collection::vec((0u32..6, pattern()), 0..40),
            removals in prop::collection::vec(any::<prop::sample::Index>(), 0..10),
            channels in prop::collection::vec(channel(), 1..20),
        ) {
            let mut held: Vec<(ClientId, Pattern)> = Vec::new();
            let mut t = SubTrie::default();
            for (c, p) in subs {
                let p = Pattern::parse(&p).unwrap();
                if !held.iter().any(|(hc, hp)| *hc == c && *hp == p) {
                    t.insert(p.as_str(), c);
                    held.push((c, p));
                }
            }
            for r in removals {
                if held.is_empty() {
                    break;
                }
                let (c, p) = held.remove(r.index(held.len()));
                prop_assert!(t.remove(p.as_str(), c));
                prop_assert!(!t.remove(p.as_str(), c), "removed twice");
            }
            for ch in &channels {
                prop_assert_eq!(indexed(&t, ch), linear(&held, ch), "channel {}", ch);
            }
            // Removing everything leaves an empty trie (pruned).
            for (c, p) in held.drain(..) {
                prop_assert!(t.remove(p.as_str(), c));
            }
            prop_assert!(t.root.is_empty());
        }
    }

    #[test]
    fn wildcard_rules_of_the_protocol() {
        let mut t = SubTrie::default();
        for (id, p) in [(1, "a/#"), (2, "+"), (3, "#"), (4, "a/+/c"), (5, "+/#")] {
            t.insert(p, id);
        }
        assert_eq!(indexed(&t, "a"), vec![1, 2, 3, 5]);
        assert_eq!(indexed(&t, "a/b/c"), vec![1, 3, 4, 5]);
        assert_eq!(indexed(&t, "b/c"), vec![3, 5]);
    }
}
