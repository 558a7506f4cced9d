//! Object paths for channels: `/org/ipchub/channel/<level>/<level>/…`.
//!
//! A channel's `/`-separated levels become path elements, so `busctl tree
//! org.ipchub` shows the channel hierarchy. Object path elements may hold only
//! `[A-Za-z0-9_]`, so each level is escaped byte by byte: ASCII letters and
//! digits stay, every other byte (`_ - . : @ =` in a valid channel name)
//! becomes `_` and two lowercase hex digits. `_` is itself escaped (`_5f`), so
//! the mapping is one-to-one and reversible:
//!
//! | channel                | object path                                   |
//! |------------------------|-----------------------------------------------|
//! | `weather`              | `/org/ipchub/channel/weather`                 |
//! | `sensors/kitchen/temp` | `/org/ipchub/channel/sensors/kitchen/temp`    |
//! | `temp-1.5`             | `/org/ipchub/channel/temp_2d1_2e5`            |
//! | `a_b`                  | `/org/ipchub/channel/a_5fb`                   |
//!
//! (The same scheme as systemd's unit object paths, applied per level.)

use std::fmt::Write;

/// Where the hub's own object lives, and its ObjectManager.
pub const HUB_PATH: &str = "/org/ipchub";
/// Parent of every channel object.
pub const CHANNEL_ROOT: &str = "/org/ipchub/channel";

/// The object path of a channel. `name` must be a valid channel name (no
/// empty levels), which every channel the hub knows is.
pub fn channel_path(name: &str) -> String {
    let mut path = String::with_capacity(CHANNEL_ROOT.len() + name.len() * 2);
    path.push_str(CHANNEL_ROOT);
    for level in name.split('/') {
        path.push('/');
        for b in level.bytes() {
            if b.is_ascii_alphanumeric() {
                path.push(b as char);
            } else {
                let _ = write!(path, "_{b:02x}");
            }
        }
    }
    path
}

/// The channel a path names, if it is a channel path made by [`channel_path`].
pub fn channel_name(path: &str) -> Option<String> {
    let rest = path.strip_prefix(CHANNEL_ROOT)?.strip_prefix('/')?;
    let mut out = Vec::with_capacity(rest.len());
    for (i, element) in rest.split('/').enumerate() {
        if element.is_empty() {
            return None;
        }
        if i > 0 {
            out.push(b'/');
        }
        let mut bytes = element.bytes();
        while let Some(b) = bytes.next() {
            match b {
                b'_' => {
                    let hex = [bytes.next()?, bytes.next()?];
                    let hex = std::str::from_utf8(&hex).ok()?;
                    // Only the canonical form decodes, so each channel has one path.
                    if hex.bytes().any(|h| h.is_ascii_uppercase()) {
                        return None;
                    }
                    let v = u8::from_str_radix(hex, 16).ok()?;
                    if v.is_ascii_alphanumeric() {
                        return None;
                    }
                    out.push(v);
                }
                b if b.is_ascii_alphanumeric() => out.push(b),
                _ => return None,
            }
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn documented_examples_hold() {
        for (name, path) in [
            ("weather", "/org/ipchub/channel/weather"),
            (
                "sensors/kitchen/temp",
                "/org/ipchub/channel/sensors/kitchen/temp",
            ),
            ("temp-1.5", "/org/ipchub/channel/temp_2d1_2e5"),
            ("a_b", "/org/ipchub/channel/a_5fb"),
            ("x@y:z=1", "/org/ipchub/channel/x_40y_3az_3d1"),
        ] {
            assert_eq!(channel_path(name), path);
            assert_eq!(channel_name(path).as_deref(), Some(name));
        }
    }

    #[test]
    fn foreign_paths_name_no_channel() {
        for path in [
            "/org/ipchub",
            "/org/ipchub/channel",
            "/org/ipchub/channelx/a",
            "/org/ipchub/channel/a//b",
            "/org/ipchub/channel/a_",
            "/org/ipchub/channel/a_2",
            "/org/ipchub/channel/a_zz",
            "/org/ipchub/channel/a_2D",
            "/org/ipchub/channel/_61",
        ] {
            assert_eq!(channel_name(path), None, "{path}");
        }
    }

    proptest! {
        #[test]
        fn every_valid_channel_maps_to_a_valid_path_and_back(
            name in "[A-Za-z0-9_.:@=-]{1,12}(/[A-Za-z0-9_.:@=-]{1,12}){0,4}"
        ) {
            prop_assume!(crate::wire::channel::validate_name(&name).is_ok());
            let path = channel_path(&name);
            prop_assert!(zbus::zvariant::ObjectPath::try_from(path.as_str()).is_ok(), "{}", path);
            prop_assert_eq!(channel_name(&path), Some(name));
        }
    }
}
