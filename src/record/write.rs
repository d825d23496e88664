//! Writing records and plan files with their modes (`--record-mode`), and the directories they go in.

use std::path::Path;

/// Writes a record (or a `plan -o` file) with `mode` (`--record-mode`), whether it is created or
/// was there: a record names hosts, paths and the command, and run directories are often shared.
pub fn write_file(path: &Path, text: &str, mode: u32) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    // Non-blocking open: a FIFO nobody reads fails at once (ENXIO) instead of blocking forever.
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    if !f.metadata()?.is_file() {
        // A FIFO with a reader, a terminal: write as a blocking file does.
        use std::os::fd::AsRawFd;
        // SAFETY: fcntl on a descriptor this function owns.
        unsafe {
            let flags = libc::fcntl(f.as_raw_fd(), libc::F_GETFL);
            libc::fcntl(f.as_raw_fd(), libc::F_SETFL, flags & !libc::O_NONBLOCK);
        }
    }
    // A file that existed keeps its mode through `open`: set it, before the content goes in
    // (regular files only: `-o /dev/stdout` must not chmod the terminal).
    if f.metadata()?.is_file() {
        f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(mode))?;
    }
    f.write_all(text.as_bytes())
}

/// Creates `dir` and its missing parents with the directory mode matching a record `mode`
/// (0600 -> 0700, 0640 -> 0750); directories that exist already are left as they are.
pub fn create_dir(dir: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(dir_mode(mode))
        .create(dir)
}

/// A file mode's directory counterpart: x wherever r is.
pub fn dir_mode(file_mode: u32) -> u32 {
    file_mode | ((file_mode & 0o444) >> 2)
}
