//! Hands planned turns to the official OpenTelemetry SDK, one pipeline per simulated service, exactly as those
//! services would: an `SdkTracerProvider` with a batch span processor, an `SdkMeterProvider` with a periodic
//! reader and an `SdkLoggerProvider` with a batch log processor, each with the service's own `Resource`, all
//! exporting OTLP (gRPC or HTTP/protobuf) through `opentelemetry-otlp`.

use std::cell::Cell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use opentelemetry::logs::{AnyValue, LogRecord as _, Logger as _, LoggerProvider as _};
use opentelemetry::metrics::{Histogram, Meter, MeterProvider as _};
use opentelemetry::trace::{
    Span as _, SpanBuilder, SpanContext, SpanId, Status, TraceContextExt, TraceFlags, TraceId, TraceState, Tracer as _,
    TracerProvider as _,
};
use opentelemetry::{Context, InstrumentationScope, KeyValue, Value};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithTonicConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::logs::{LogBatch, LogExporter, SdkLogger, SdkLoggerProvider};
use opentelemetry_sdk::metrics::data::ResourceMetrics;
use opentelemetry_sdk::metrics::exporter::PushMetricExporter;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider, Temporality};
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, IdGenerator, RandomIdGenerator, SdkTracer, SdkTracerProvider, SpanData,
    SpanExporter,
};
use tokio::runtime::Handle;

use super::fleet;
use super::plan::{Emitter, TracePlan};
use super::{Endpoints, SimError, Transport};

thread_local! {
    /// The ids the next span built on this thread must carry (see [`PlannedIds`]).
    static NEXT_IDS: Cell<Option<(u128, u64)>> = const { Cell::new(None) };
}

/// An id generator that hands out the ids the plan chose, so a seed reproduces trace and span ids too.
///
/// The SDK asks its generator for ids inside `build_with_context`, synchronously, on the calling thread: the
/// emitter stores the planned ids in a thread-local just before. Anything else building spans on these providers
/// (nothing does) would get random ids.
#[derive(Debug, Default)]
struct PlannedIds {
    random: RandomIdGenerator,
}

impl IdGenerator for PlannedIds {
    fn new_trace_id(&self) -> TraceId {
        match NEXT_IDS.with(Cell::get) {
            Some((t, _)) => TraceId::from(t),
            None => self.random.new_trace_id(),
        }
    }
    fn new_span_id(&self) -> SpanId {
        match NEXT_IDS.with(Cell::get) {
            Some((_, s)) => SpanId::from(s),
            None => self.random.new_span_id(),
        }
    }
}

/// An SDK exporter whose exports run on a tokio runtime: the shim every OTLP exporter of the official SDK needs
/// when its provider exports from the SDK's own threads (the simulated fleet's pipelines, the integration tests'
/// providers).
///
/// The SDK's batch processors and periodic reader export from their own threads with a plain executor, but the
/// OTLP clients (tonic, async reqwest) need a tokio reactor and timers: this enters the runtime for each export.
/// With [`OnRuntime::counting`] it also counts what each export delivered, so export failures are visible to the
/// user of `simulate`.
#[derive(Debug)]
pub struct OnRuntime<E> {
    inner: E,
    handle: Handle,
    counters: Option<Arc<SignalCounters>>,
}

impl<E> OnRuntime<E> {
    /// `inner`, exporting on the runtime of `handle`.
    pub fn new(inner: E, handle: Handle) -> OnRuntime<E> {
        OnRuntime { inner, handle, counters: None }
    }

    /// Counts every export's items in `counters`: delivered, or failed with the latest error.
    pub fn counting(mut self, counters: Arc<SignalCounters>) -> OnRuntime<E> {
        self.counters = Some(counters);
        self
    }

    fn record(&self, items: u64, result: OTelSdkResult) -> OTelSdkResult {
        let Some(counters) = &self.counters else { return result };
        match &result {
            Ok(()) => {
                counters.exported.fetch_add(items, Ordering::Relaxed);
            }
            Err(e) => {
                counters.failed.fetch_add(items, Ordering::Relaxed);
                *counters.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.to_string());
            }
        }
        result
    }
}

/// What one signal's exports delivered, over the whole fleet.
#[derive(Debug, Default)]
pub struct SignalCounters {
    /// Items (spans, log records; metric exports count one per export) the endpoint acknowledged.
    pub exported: AtomicU64,
    /// Items whose export failed after the exporter's retries.
    pub failed: AtomicU64,
    /// The latest export error.
    pub last_error: Mutex<Option<String>>,
}

/// Export counters of the three signals.
#[derive(Debug, Default)]
pub struct ExportCounters {
    /// Spans.
    pub spans: Arc<SignalCounters>,
    /// Metric exports.
    pub metrics: Arc<SignalCounters>,
    /// Log records.
    pub logs: Arc<SignalCounters>,
}

impl<E: SpanExporter> SpanExporter for OnRuntime<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let n = batch.len() as u64;
        let result = self.handle.block_on(self.inner.export(batch));
        self.record(n, result)
    }
    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }
    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }
    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource)
    }
}

impl<E: LogExporter> LogExporter for OnRuntime<E> {
    async fn export(&self, batch: LogBatch<'_>) -> OTelSdkResult {
        let n = batch.iter().count() as u64;
        let result = self.handle.block_on(self.inner.export(batch));
        self.record(n, result)
    }
    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }
    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource)
    }
}

impl<E: PushMetricExporter> PushMetricExporter for OnRuntime<E> {
    async fn export(&self, metrics: &ResourceMetrics) -> OTelSdkResult {
        let result = self.handle.block_on(self.inner.export(metrics));
        self.record(1, result)
    }
    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }
    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }
    fn temporality(&self) -> Temporality {
        self.inner.temporality()
    }
}

/// One simulated service's SDK: its three providers and instruments.
struct Pipeline {
    tracer_provider: SdkTracerProvider,
    tracer: SdkTracer,
    meter_provider: SdkMeterProvider,
    logger_provider: SdkLoggerProvider,
    logger: SdkLogger,
    token_usage: Histogram<u64>,
    operation_duration: Histogram<f64>,
}

/// Every simulated service's SDK pipeline.
pub struct Fleet {
    pipelines: HashMap<Emitter, Pipeline>,
}

/// Where and how to export.
#[derive(Debug, Clone)]
pub struct Target {
    /// Each signal's endpoint.
    pub endpoints: Endpoints,
    /// Each cloud's own endpoints, where it has them (see [`crate::SimConfig::by_cloud`]).
    pub by_cloud: std::collections::BTreeMap<String, Endpoints>,
    /// gRPC or HTTP/protobuf.
    pub transport: Transport,
    /// How often metrics are exported.
    pub metric_interval: Duration,
    /// How long spans may wait in a batch.
    pub batch_delay: Duration,
    /// Span queue per service; a full queue drops spans (counted by the SDK), as in any real service.
    pub queue_size: usize,
}

fn build_err(what: &str, e: impl std::fmt::Display) -> SimError {
    SimError::Exporter(format!("{what}: {e}"))
}

impl Fleet {
    /// Builds one SDK pipeline per service and backend of the fleet. Must run inside the tokio runtime.
    pub fn new(target: &Target, counters: &ExportCounters) -> Result<Fleet, SimError> {
        let handle = Handle::try_current().map_err(|e| build_err("no tokio runtime", e))?;
        let mut pipelines = HashMap::new();
        for (i, s) in fleet::SERVICES.iter().enumerate() {
            let resource = resource(s.name, s.version, s.place, s.environment, Some(s.agent));
            pipelines.insert(Emitter::Service(i), pipeline(target, s.place.cloud, &handle, counters, resource)?);
        }
        for (i, b) in fleet::backends().iter().enumerate() {
            let resource = resource(b.service, "1.8.2", b.place, "production", None);
            pipelines.insert(Emitter::Backend(i), pipeline(target, b.place.cloud, &handle, counters, resource)?);
        }
        Ok(Fleet { pipelines })
    }

    /// Emits one planned turn whose root started at `t0`. Returns the number of spans handed to the SDK.
    pub fn emit(&self, plan: &TracePlan, t0: SystemTime) -> usize {
        let at = |ns: u64| t0 + Duration::from_nanos(ns);
        for s in &plan.spans {
            let p = &self.pipelines[&s.emitter];
            let cx = match s.parent {
                None => Context::new(),
                Some(parent) => Context::new().with_remote_span_context(SpanContext::new(
                    TraceId::from(plan.trace_id),
                    SpanId::from(parent),
                    TraceFlags::SAMPLED,
                    s.remote_parent,
                    TraceState::default(),
                )),
            };
            let builder = SpanBuilder::from_name(s.name.clone())
                .with_kind(s.kind.clone())
                .with_start_time(at(s.start_ns))
                .with_attributes(s.attributes.clone());
            NEXT_IDS.with(|c| c.set(Some((plan.trace_id, s.span_id))));
            let mut span = p.tracer.build_with_context(builder, &cx);
            NEXT_IDS.with(|c| c.set(None));
            if let Some(msg) = &s.error {
                span.set_status(Status::error(msg.clone()));
            }
            span.end_with_timestamp(at(s.end_ns));

            if let Some(u) = &s.usage {
                let mut attrs = vec![
                    KeyValue::new("gen_ai.operation.name", u.operation),
                    KeyValue::new("gen_ai.provider.name", u.provider),
                    KeyValue::new("gen_ai.request.model", u.request_model),
                    KeyValue::new("gen_ai.response.model", u.response_model),
                ];
                if let Some(e) = u.error_type {
                    attrs.push(KeyValue::new("error.type", e));
                }
                p.operation_duration.record((s.end_ns - s.start_ns) as f64 / 1e9, &attrs);
                if u.error_type.is_none() || u.input_tokens > 0 {
                    attrs.push(KeyValue::new("gen_ai.token.type", "input"));
                    p.token_usage.record(u.input_tokens, &attrs);
                    if u.output_tokens > 0 {
                        attrs.pop();
                        attrs.push(KeyValue::new("gen_ai.token.type", "output"));
                        p.token_usage.record(u.output_tokens, &attrs);
                    }
                }
            }
        }
        for l in &plan.logs {
            let p = &self.pipelines[&l.emitter];
            let mut rec = p.logger.create_log_record();
            rec.set_timestamp(at(l.at_ns));
            rec.set_observed_timestamp(at(l.at_ns));
            rec.set_severity_number(l.severity);
            rec.set_severity_text(l.severity.name());
            rec.set_body(AnyValue::from(l.body.clone()));
            rec.add_attributes(l.attributes.iter().map(|kv| (kv.key.clone(), any_value(&kv.value))));
            rec.set_trace_context(TraceId::from(plan.trace_id), SpanId::from(l.span_id), Some(TraceFlags::SAMPLED));
            p.logger.emit(rec);
        }
        plan.spans.len()
    }

    /// Flushes and shuts every pipeline down (blocking: call from a blocking thread). Returns the errors met.
    pub fn shutdown(self) -> Vec<String> {
        let mut errors = Vec::new();
        for (emitter, p) in self.pipelines {
            let name = match emitter {
                Emitter::Service(i) => format!("{} ({})", fleet::SERVICES[i].name, fleet::SERVICES[i].place.region),
                Emitter::Backend(i) => {
                    format!("{} ({})", fleet::backends()[i].service, fleet::backends()[i].place.region)
                }
            };
            if let Err(e) = p.tracer_provider.shutdown() {
                errors.push(format!("{name}: traces: {e}"));
            }
            if let Err(e) = p.meter_provider.shutdown() {
                errors.push(format!("{name}: metrics: {e}"));
            }
            if let Err(e) = p.logger_provider.shutdown() {
                errors.push(format!("{name}: logs: {e}"));
            }
        }
        errors
    }
}

fn any_value(v: &Value) -> AnyValue {
    match v {
        Value::Bool(b) => AnyValue::Boolean(*b),
        Value::I64(i) => AnyValue::Int(*i),
        Value::F64(f) => AnyValue::Double(*f),
        other => AnyValue::String(other.to_string().into()),
    }
}

fn resource(
    service: &'static str,
    version: &'static str,
    place: fleet::Place,
    environment: &'static str,
    agent: Option<&'static str>,
) -> Resource {
    let mut attrs = vec![
        KeyValue::new("service.version", version),
        KeyValue::new("service.namespace", "acme-agents"),
        KeyValue::new("cloud.provider", place.cloud),
        KeyValue::new("cloud.region", place.region),
        KeyValue::new("deployment.environment.name", environment),
        KeyValue::new("host.name", format!("{service}-{}-7f9c", place.region)),
    ];
    if let Some(agent) = agent {
        attrs.push(KeyValue::new("gen_ai.agent.name", agent));
    }
    Resource::builder().with_service_name(service).with_attributes(attrs).build()
}

/// One service's OTLP exporters, one per signal.
type Exporters =
    (opentelemetry_otlp::SpanExporter, opentelemetry_otlp::MetricExporter, opentelemetry_otlp::LogExporter);

fn exporters(e: &Endpoints, transport: Transport) -> Result<Exporters, SimError> {
    Ok(match transport {
        Transport::Grpc => (
            opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(&e.traces)
                .with_compression(opentelemetry_otlp::Compression::Gzip)
                .build()
                .map_err(|e| build_err("span exporter", e))?,
            opentelemetry_otlp::MetricExporter::builder()
                .with_tonic()
                .with_endpoint(&e.metrics)
                .with_temporality(Temporality::Delta)
                .build()
                .map_err(|e| build_err("metric exporter", e))?,
            opentelemetry_otlp::LogExporter::builder()
                .with_tonic()
                .with_endpoint(&e.logs)
                .build()
                .map_err(|e| build_err("log exporter", e))?,
        ),
        Transport::Http => (
            opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(Protocol::HttpBinary)
                .with_endpoint(&e.traces)
                .build()
                .map_err(|e| build_err("span exporter", e))?,
            opentelemetry_otlp::MetricExporter::builder()
                .with_http()
                .with_protocol(Protocol::HttpBinary)
                .with_endpoint(&e.metrics)
                .with_temporality(Temporality::Delta)
                .build()
                .map_err(|e| build_err("metric exporter", e))?,
            opentelemetry_otlp::LogExporter::builder()
                .with_http()
                .with_protocol(Protocol::HttpBinary)
                .with_endpoint(&e.logs)
                .build()
                .map_err(|e| build_err("log exporter", e))?,
        ),
    })
}

/// The GenAI client metrics' histograms: token usage and operation duration, with the conventions' buckets.
fn instruments(meter: &Meter) -> (Histogram<u64>, Histogram<f64>) {
    let token_usage = meter
        .u64_histogram("gen_ai.client.token.usage")
        .with_unit("{token}")
        .with_description("Number of input and output tokens used")
        .with_boundaries(vec![
            1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0,
        ])
        .build();
    let operation_duration = meter
        .f64_histogram("gen_ai.client.operation.duration")
        .with_unit("s")
        .with_description("GenAI operation duration")
        .with_boundaries(vec![0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92])
        .build();
    (token_usage, operation_duration)
}

fn pipeline(
    target: &Target,
    cloud: &str,
    handle: &Handle,
    counters: &ExportCounters,
    resource: Resource,
) -> Result<Pipeline, SimError> {
    let scope = InstrumentationScope::builder("tailscope-simulator").with_version(env!("CARGO_PKG_VERSION")).build();
    let (spans, metrics, logs) = exporters(target.by_cloud.get(cloud).unwrap_or(&target.endpoints), target.transport)?;
    let span_processor =
        BatchSpanProcessor::builder(OnRuntime::new(spans, handle.clone()).counting(counters.spans.clone()))
            .with_batch_config(
                BatchConfigBuilder::default()
                    .with_max_queue_size(target.queue_size)
                    .with_max_export_batch_size(512)
                    .with_scheduled_delay(target.batch_delay)
                    .build(),
            )
            .build();
    let tracer_provider = SdkTracerProvider::builder()
        .with_span_processor(span_processor)
        .with_id_generator(PlannedIds::default())
        .with_resource(resource.clone())
        .build();
    let tracer = tracer_provider.tracer_with_scope(scope.clone());

    let reader = PeriodicReader::builder(OnRuntime::new(metrics, handle.clone()).counting(counters.metrics.clone()))
        .with_interval(target.metric_interval)
        .build();
    let meter_provider = SdkMeterProvider::builder().with_reader(reader).with_resource(resource.clone()).build();
    let (token_usage, operation_duration) = instruments(&meter_provider.meter_with_scope(scope.clone()));

    let logger_provider = SdkLoggerProvider::builder()
        .with_batch_exporter(OnRuntime::new(logs, handle.clone()).counting(counters.logs.clone()))
        .with_resource(resource)
        .build();
    let logger = logger_provider.logger_with_scope(scope);
    Ok(Pipeline { tracer_provider, tracer, meter_provider, logger_provider, logger, token_usage, operation_duration })
}
