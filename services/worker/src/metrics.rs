//! The worker's Prometheus metrics.

/// The worker's Prometheus metrics: tasks by exit, fuel and CPU time, and the sandbox's
/// compile-cache counters (a cache hit never shows as a compile).
pub(crate) struct WorkerMetrics {
    pub(crate) registry: zkmesh_kit::telemetry::Metrics,
    pub(crate) tasks: prometheus_client::metrics::family::Family<
        Vec<(String, String)>,
        prometheus_client::metrics::counter::Counter,
    >,
    pub(crate) fuel: prometheus_client::metrics::counter::Counter,
    pub(crate) cpu_us: prometheus_client::metrics::counter::Counter,
    pub(crate) sandbox: [prometheus_client::metrics::gauge::Gauge; 6],
}

impl WorkerMetrics {
    pub(crate) fn new() -> WorkerMetrics {
        let registry = zkmesh_kit::telemetry::Metrics::new("worker");
        let tasks = registry.counter_family("worker_tasks", "Guests run, by terminal state");
        let fuel = registry.counter("worker_fuel_used", "Fuel used by the guests run here");
        let cpu_us = registry.counter(
            "worker_guest_cpu_microseconds",
            "CPU time of the threads that ran guests",
        );
        let sandbox = [
            (
                "sandbox_compiles",
                "Modules compiled by wasmtime since start",
            ),
            (
                "sandbox_cache_memory_hits",
                "Compiled modules found in memory",
            ),
            (
                "sandbox_cache_disk_hits",
                "Compiled modules loaded from the disk cache",
            ),
            (
                "sandbox_cache_rejected",
                "Disk cache files that failed their check and were rebuilt",
            ),
            (
                "sandbox_compile_timeouts",
                "Compiles abandoned after the compile timeout",
            ),
            ("sandbox_runs", "Guests instantiated"),
        ]
        .map(|(name, help)| registry.gauge(name, help));
        WorkerMetrics {
            registry,
            tasks,
            fuel,
            cpu_us,
            sandbox,
        }
    }

    pub(crate) fn record(&self, outcome: &zkmesh_runtime::Outcome, stats: zkmesh_runtime::Stats) {
        self.tasks
            .get_or_create(&vec![("exit".into(), outcome.exit.kind().into())])
            .inc();
        self.fuel.inc_by(outcome.fuel_used);
        self.cpu_us.inc_by(outcome.cpu_time.as_micros() as u64);
        let values = [
            stats.compiles,
            stats.memory_hits,
            stats.disk_hits,
            stats.disk_rejected,
            stats.compile_timeouts,
            stats.runs,
        ];
        for (gauge, v) in self.sandbox.iter().zip(values) {
            gauge.set(v as i64);
        }
    }
}
