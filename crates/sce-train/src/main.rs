fn main() -> std::process::ExitCode {
    keep_freed_memory_for_reuse();
    sce_train::cli::main()
}

/// Serves every allocation from the heap and keeps freed memory there for the next one.
///
/// A training step allocates and frees the same large activation buffers over and over. glibc
/// maps each buffer above 32 MiB afresh from the kernel and unmaps it when freed, so every step
/// paid for zeroing and faulting in those pages again: a quarter of a CPU ResNet-50 step
/// (docs/benchmarks.md). Peak memory is what is alive at once either way.
fn keep_freed_memory_for_reuse() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `mallopt` only changes allocator tunables; it is called before any other thread
    // exists, and both values are documented options.
    unsafe {
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}
