//! The `qpeft` command line: a thin layer over the library.

mod cli;

use clap::Parser;

/// glibc's malloc serves the multi-megabyte activation buffers of a training step with fresh
/// mmaps and hands them back on free, so every step faults them in and zeroes them again (a
/// tenth of a CPU step, docs/performance.md). Keep freed memory in the heap instead.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn keep_freed_memory() {
    // SAFETY: mallopt only sets allocator parameters; it is called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn keep_freed_memory() {}

/// Rust ignores SIGPIPE, so `qpeft … | head` made every later `println!` panic ("failed
/// printing to stdout: Broken pipe"). A command-line tool ends quietly instead, as `cat` does.
#[cfg(unix)]
fn end_quietly_on_closed_pipes() {
    // SAFETY: restores the default disposition of one signal before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

#[cfg(not(unix))]
fn end_quietly_on_closed_pipes() {}

fn main() -> std::process::ExitCode {
    keep_freed_memory();
    end_quietly_on_closed_pipes();
    let args = cli::Cli::parse();
    match cli::run(args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
