// swift-tools-version: 6.0
// QoQ for Swift: load, quantize (QoQ W4A8KV4), evaluate and serve Llama-family models.
import PackageDescription

// Kernel targets are compiled with explicit x86 ISA flags (see ../shared/specs/swift-perf.md §1): without them
// SIMD16<Float> FMAs become libcalls and the intel intrinsics crash the compiler. "-O" makes the kernels fast
// even in debug `swift test` builds. On other architectures the portable SIMD paths are used.
#if arch(x86_64)
let isa: [String] = ["-Xcc", "-mavx512f", "-Xcc", "-mavx512bw", "-Xcc", "-mavx512vl", "-Xcc", "-mavx512dq",
                     "-Xcc", "-mavx512vnni", "-Xcc", "-mavx512bf16", "-Xcc", "-mavxvnni",
                     "-Xcc", "-mfma", "-Xcc", "-mf16c", "-Xcc", "-mbmi2"]
#else
let isa: [String] = []
#endif
let fast: [SwiftSetting] = [.unsafeFlags(isa + ["-O"])]
let isaOnly: [SwiftSetting] = [.unsafeFlags(isa)]

let package = Package(
  name: "QoQ",
  platforms: [.macOS(.v14)],
  products: [
    .executable(name: "qoq", targets: ["qoq"]),
    .library(name: "QoQModels", targets: ["QoQModels"]),
  ],
  dependencies: [
    .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
    .package(url: "https://github.com/jpsim/Yams", from: "6.0.0"),
    // The HTTP server (qoq serve) and, in tests only, a real HTTP client talking to it on loopback.
    .package(url: "https://github.com/hummingbird-project/hummingbird", from: "2.28.0"),
    .package(url: "https://github.com/swift-server/async-http-client", from: "1.30.0"),
    .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.0.0"),
    .package(url: "https://github.com/apple/swift-http-types", from: "1.0.0"),
  ],
  targets: [
    .target(name: "CShim"),
    // Hot kernels: SGEMM, vector ops. Scalar twins live next to each fast kernel.
    .target(name: "QoQKernels", dependencies: ["CShim"], swiftSettings: fast),
    // Checkpoint formats: safetensors, GGUF (+ ggml block dequantization), config.json, JSON, atomic writes.
    .target(name: "QoQIO", swiftSettings: fast),
    // Tokenizers from tokenizer.json and GGUF metadata.
    .target(name: "QoQTokenizers", dependencies: ["QoQIO"], swiftSettings: fast),
    // FP reference models (one file per family), KV cache, weight loading.
    .target(name: "QoQModels", dependencies: ["QoQKernels", "QoQIO", "QoQTokenizers"], swiftSettings: fast),
    // The on-disk quantized format shared by the quantizer and the engine: number formats, quantized weights,
    // checkpoint reader/writer, fake-quantization runtime (activation and KV quantizers).
    .target(name: "QoQFormat", dependencies: ["QoQModels", "QoQIO", "QoQKernels", "QoQTokenizers"], swiftSettings: fast),
    // The offline quantizer (deepcompressor's QoQ and baselines): GPTQ, rotation, smoothing, calibration, recipes.
    .target(name: "QoQQuant", dependencies: ["QoQFormat", "QoQModels", "QoQKernels", "QoQIO", "QoQTokenizers", "QoQEval",
                                         .product(name: "Yams", package: "Yams")], swiftSettings: fast),
    // In-flight batching scheduler, block manager and sampler: pure logic, no tensors, no I/O.
    .target(name: "QoQScheduler", dependencies: ["QoQIO"], swiftSettings: fast),
    // The inference engine: checkpoints repacked for the integer kernels, paged KV cache, batched steps.
    .target(name: "QoQEngine", dependencies: ["QoQKernels", "QoQModels", "QoQFormat", "QoQIO", "QoQTokenizers", "QoQScheduler", "QoQEval"],
            swiftSettings: fast),
    // The serving core without HTTP: the engine on its own thread, OpenAI request/response shapes, metrics.
    .target(name: "QoQServing", dependencies: ["QoQEngine", "QoQScheduler", "QoQIO", "QoQTokenizers"], swiftSettings: fast),
    // The OpenAI-compatible HTTP server on Hummingbird: routes, API key, limits, SSE streaming, graceful drain.
    .target(name: "QoQServer", dependencies: ["QoQServing", "QoQEngine", "QoQScheduler", "QoQIO", "QoQTokenizers",
                                          .product(name: "Hummingbird", package: "hummingbird"),
                                          .product(name: "HummingbirdCore", package: "hummingbird"),
                                          .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                                          .product(name: "HTTPTypes", package: "swift-http-types")], swiftSettings: isaOnly),
    // Interop: QServe / TinyChat export, deepcompressor (torch.save files) and QServe import.
    .target(name: "QoQInterop", dependencies: ["QoQFormat", "QoQIO", "QoQModels"], swiftSettings: fast),
    // Perplexity (GPTQ and llama.cpp protocols).
    .target(name: "QoQEval", dependencies: ["QoQModels", "QoQTokenizers", "QoQIO", "QoQFormat"], swiftSettings: fast),
    .executableTarget(name: "qoq", dependencies: [
      "QoQModels", "QoQEval", "QoQIO", "QoQTokenizers", "QoQKernels", "QoQFormat", "QoQQuant", "QoQEngine", "QoQScheduler", "QoQInterop", "QoQServing", "QoQServer",
      .product(name: "ArgumentParser", package: "swift-argument-parser"),
    ], swiftSettings: isaOnly),
    // Bounded mutation fuzzer over every parser; CI runs it for a few seconds per target.
    .executableTarget(name: "qoq-fuzz", dependencies: ["QoQIO", "QoQModels", "QoQTokenizers", "QoQServing"], swiftSettings: isaOnly),
    .testTarget(name: "QoQKernelsTests", dependencies: ["QoQKernels", "QoQIO", "QoQFormat", "QoQTestSupport"], swiftSettings: isaOnly),
    .testTarget(name: "QoQIOTests", dependencies: ["QoQIO"], swiftSettings: isaOnly),
    .testTarget(name: "QoQTokenizersTests", dependencies: ["QoQTokenizers", "QoQIO"], swiftSettings: isaOnly),
    // Tiny in-memory models of every family and a plain Double-precision reference forward, shared by tests.
    .target(name: "QoQTestSupport", dependencies: ["QoQModels", "QoQIO"], path: "Tests/QoQTestSupport",
            swiftSettings: isaOnly),
    .testTarget(name: "QoQModelsTests", dependencies: ["QoQModels", "QoQIO", "QoQKernels", "QoQTokenizers", "QoQTestSupport"],
                swiftSettings: isaOnly),
    .testTarget(name: "QoQQuantTests", dependencies: ["QoQQuant", "QoQFormat", "QoQModels", "QoQIO", "QoQTestSupport"],
                swiftSettings: isaOnly),
    .testTarget(name: "QoQSchedulerTests", dependencies: ["QoQScheduler", "QoQIO"], swiftSettings: isaOnly),
    .testTarget(name: "QoQEngineTests", dependencies: ["QoQEngine", "QoQScheduler", "QoQFormat", "QoQQuant", "QoQModels", "QoQKernels", "QoQIO", "QoQEval", "QoQTestSupport"],
                swiftSettings: isaOnly),
    .testTarget(name: "QoQServingTests", dependencies: ["QoQServing", "QoQServer", "QoQEngine",
                                                       .product(name: "AsyncHTTPClient", package: "async-http-client"), "QoQScheduler", "QoQModels", "QoQIO", "QoQTestSupport"],
                swiftSettings: isaOnly),
    .testTarget(name: "QoQInteropTests", dependencies: ["QoQInterop", "QoQFormat", "QoQQuant", "QoQIO", "QoQModels", "QoQTestSupport"],
                swiftSettings: isaOnly),
    .testTarget(name: "QoQEvalTests", dependencies: ["QoQEval", "QoQModels", "QoQTokenizers", "QoQIO", "QoQTestSupport"],
                swiftSettings: isaOnly),
  ]
)
