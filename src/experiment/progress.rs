//! Progress lines of a grid on stderr (`experiment: ...`), when progress is on.

pub(super) fn say(progress: bool, msg: impl AsRef<str>) {
    if progress {
        eprintln!("experiment: {}", msg.as_ref());
    }
}
