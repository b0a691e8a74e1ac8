//! The `kgate` command: a thin shell over the library. The commands, the load
//! tool and the demo producer live here, not in the gateway's library.

mod bench;
mod cli;
mod demo;

use std::process::ExitCode;

use clap::Parser;

// Records are allocated on Kafka reader threads and freed on the connection workers;
// glibc's per-arena locks made those cross-thread frees a quarter of a replay's CPU.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Run by each runtime worker as it goes idle: at most once a second per thread, hands
/// memory freed since (after a burst of connections, say) back to the OS. mimalloc
/// otherwise returns a thread's free pages only when that thread allocates again, and
/// a quiet worker of a gateway holding idle connections may not for a long time.
fn release_idle_memory() {
    use std::cell::Cell;
    use std::time::{Duration, Instant};
    thread_local! {
        static LAST: Cell<Option<Instant>> = const { Cell::new(None) };
    }
    let now = Instant::now();
    if LAST
        .get()
        .is_some_and(|last| now.duration_since(last) < Duration::from_secs(1))
    {
        return;
    }
    LAST.set(Some(now));
    // SAFETY: mi_collect takes no pointers; it frees what this thread's heap no longer uses.
    unsafe { libmimalloc_sys::mi_collect(false) };
}

/// Turns transparent huge pages off for this process (Linux; the gateway only, not the
/// processes benches start). mimalloc asks for them on its arenas, and the queues a burst
/// grows were then faulted in 2 MiB at a time: zeroing those pages took 17% of the
/// gateway's CPU in a 1,000-client fan-out, 0.2% with 4 KiB pages (BENCHMARKS.md).
pub(crate) fn disable_transparent_huge_pages() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: prctl with integer arguments only.
        let r = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
        if r != 0 {
            let e = std::io::Error::last_os_error();
            tracing::debug!(error = %e, "transparent huge pages stay enabled");
        }
    }
}

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    match cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kgate: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
