//! Writing: flushing a client's queue to its data link or control
//! connection once the hub marked it dirty (or the kernel said it has room).

use super::*;

impl EventLoop {
    pub(super) fn flush(&mut self, id: ClientId) {
        let Some(c) = self.clients.get_mut(&id) else {
            return;
        };
        if c.closing.is_some() {
            self.flush_closing(id);
            return;
        }
        let Some(q) = self.hub.queue(id) else { return };
        let res = match c.data.as_mut() {
            Some(link) => link.flush(q),
            None => flush_ctrl(&c.ctrl, q).map(|()| 0),
        };
        match res {
            Ok(lost) => {
                if lost > 0 {
                    self.hub.count_lost(id, lost);
                }
                self.hub.flushed(id);
            }
            Err(e) => self.close(id, CloseReason::Write(e)),
        }
    }
}

/// Flush to the control connection (socket transport); a client without one
/// always has a data link, so this is never reached for it.
pub(super) fn flush_ctrl(
    ctrl: &Option<OwnedFd>,
    q: &mut crate::hub::queue::OutQueue,
) -> io::Result<()> {
    match ctrl {
        Some(fd) => flush_stream(fd, q),
        None => Ok(()),
    }
}
