// swift-tools-version: 6.0
// QoQ for Swift: load, quantize (QoQ W4A8KV4), evaluate and serve Llama-family models.
import PackageDescription

// Instruction sets (../shared/specs/swift-perf.md §1). The package is built for the machine it is built on, like
// llama.cpp's GGML_NATIVE: the AVX-512 VNNI kernels where the CPU has them (`QOQ_AVX512`), otherwise AVX2/FMA
// code generation with the portable kernel paths, otherwise plain x86-64. AVX512_BF16 is not required: the one kernel
// that uses it (vdpbf16ps in BF16GEMM.swift) checks for it at run time, so Cascade Lake and Ice Lake get the AVX-512
// kernels too; -mavx512bf16 only lets that kernel compile (the compiler emits bf16 instructions from nothing else). QOQ_ISA=avx512|avx2|portable overrides the
// detection (to build for another machine). A binary run on a CPU that lacks what it was built for stops at start-up
// with a message naming the missing feature (Sources/CShim/shim.c), never with SIGILL. "-O" makes the kernels fast
// even in debug `swift test` builds.
#if arch(x86_64)
import Foundation
let cpuFlags: Set<String> = {
  guard let info = try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8),
        let line = info.split(separator: "\n").first(where: { $0.hasPrefix("flags") }) else { return [] }
  return Set(line.split(separator: " ").map(String.init))
}()
let avx512Needs = ["avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_vnni", "fma", "f16c", "bmi2"]
let avx2Needs = ["avx2", "fma", "f16c", "bmi2"]
let isaChoice: String = {
  if let forced = ProcessInfo.processInfo.environment["QOQ_ISA"], !forced.isEmpty { return forced }
  // Where /proc/cpuinfo is unreadable (macOS), keep the AVX2 baseline.
  if cpuFlags.isEmpty { return "avx2" }
  if avx512Needs.allSatisfy(cpuFlags.contains) { return "avx512" }
  return avx2Needs.allSatisfy(cpuFlags.contains) ? "avx2" : "portable"
}()
let avx2Flags = ["-mavx2", "-mfma", "-mf16c", "-mbmi2"]
let avx512Flags = avx2Flags + ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mavx512vnni", "-mavx512bf16"]
  + (cpuFlags.contains("avx_vnni") ? ["-mavxvnni"] : [])
let isaClang: [String] = isaChoice == "avx512" ? avx512Flags : isaChoice == "avx2" ? avx2Flags : []
let isa: [String] = isaClang.flatMap { ["-Xcc", $0] }
let isaDefines: [SwiftSetting] = isaChoice == "avx512" ? [.define("QOQ_AVX512")] : isaChoice == "avx2" ? [.define("QOQ_AVX2")] : []
// The start-up check in CShim knows which features this build needs.
let shimDefines: [CSetting] = isaChoice == "avx512" ? [.define("QOQ_REQUIRE_AVX512")] : isaChoice == "avx2" ? [.define("QOQ_REQUIRE_AVX2")] : []
#else
let isa: [String] = []
let isaDefines: [SwiftSetting] = []
let shimDefines: [CSetting] = []
#endif
let fast: [SwiftSetting] = [.unsafeFlags(isa + ["-O"])] + isaDefines
let isaOnly: [SwiftSetting] = [.unsafeFlags(isa)] + isaDefines

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
    // The HTTP server (qoq serve); the HTTP client that downloads models by name (QoQHub), and in tests talks to the
    // server on loopback.
    .package(url: "https://github.com/hummingbird-project/hummingbird", from: "2.28.0"),
    .package(url: "https://github.com/swift-server/async-http-client", from: "1.30.0"),
    .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.0.0"),
    .package(url: "https://github.com/apple/swift-http-types", from: "1.0.0"),
    // Imported by the server and the hub client next to Hummingbird / AsyncHTTPClient (which build on them).
    .package(url: "https://github.com/apple/swift-nio.git", from: "2.80.0"),
    .package(url: "https://github.com/apple/swift-nio-extras.git", from: "1.24.0"),
    .package(url: "https://github.com/apple/swift-log.git", from: "1.6.0"),
  ],
  targets: [
    .target(name: "CShim", cSettings: shimDefines),
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
    .target(name: "QoQQuant", dependencies: ["QoQFormat", "QoQModels", "QoQKernels", "QoQIO", "QoQTokenizers",
                                         .product(name: "Yams", package: "Yams")], swiftSettings: fast),
    // In-flight batching scheduler, block manager and sampler: pure logic, no tensors, no I/O.
    .target(name: "QoQScheduler", dependencies: ["QoQIO"], swiftSettings: fast),
    // The inference engine: checkpoints repacked for the integer kernels, paged KV cache, batched steps.
    .target(name: "QoQEngine", dependencies: ["QoQKernels", "QoQModels", "QoQFormat", "QoQIO", "QoQTokenizers", "QoQScheduler", "QoQEval"],
            swiftSettings: fast),
    // The serving core without HTTP: the engine on its own thread, OpenAI request/response shapes, metrics.
    .target(name: "QoQServing", dependencies: ["QoQEngine", "QoQScheduler", "QoQIO"], swiftSettings: fast),
    // The OpenAI-compatible HTTP server on Hummingbird: routes, API key, limits, SSE streaming, graceful drain.
    .target(name: "QoQServer", dependencies: ["QoQServing", "QoQEngine", "QoQKernels", "QoQScheduler", "QoQIO", "QoQTokenizers",
                                          .product(name: "Hummingbird", package: "hummingbird"),
                                          .product(name: "HummingbirdCore", package: "hummingbird"),
                                          .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                                          .product(name: "HTTPTypes", package: "swift-http-types"),
                                          .product(name: "NIOCore", package: "swift-nio"), .product(name: "NIOHTTP1", package: "swift-nio"),
                                          .product(name: "NIOHTTPTypes", package: "swift-nio-extras"),
                                          .product(name: "Logging", package: "swift-log")], swiftSettings: isaOnly),
    // Interop: QServe / TinyChat export, deepcompressor (torch.save files) and QServe import.
    // Models by name: downloads from the Hugging Face hub into its cache layout (issue #16).
    .target(name: "QoQHub", dependencies: ["QoQIO", "QoQModels", .product(name: "AsyncHTTPClient", package: "async-http-client"),
                                       .product(name: "NIOCore", package: "swift-nio"), .product(name: "NIOHTTP1", package: "swift-nio")],
            swiftSettings: isaOnly),
    .target(name: "QoQInterop", dependencies: ["QoQFormat", "QoQIO", "QoQModels", "QoQTokenizers"], swiftSettings: fast),
    // Perplexity (GPTQ and llama.cpp protocols).
    .target(name: "QoQEval", dependencies: ["QoQModels", "QoQTokenizers", "QoQIO", "QoQKernels"], swiftSettings: fast),
    .executableTarget(name: "qoq", dependencies: [
      "QoQModels", "QoQEval", "QoQIO", "QoQTokenizers", "QoQKernels", "QoQFormat", "QoQQuant", "QoQEngine", "QoQScheduler", "QoQInterop", "QoQServing", "QoQServer",
      "QoQHub", .product(name: "ArgumentParser", package: "swift-argument-parser"),
    ], swiftSettings: isaOnly),
    // Bounded mutation fuzzer over every parser; CI runs it for a few seconds per target.
    .executableTarget(name: "qoq-fuzz", dependencies: ["QoQIO", "QoQModels", "QoQTokenizers", "QoQServing", "QoQTestSupport"],
                      swiftSettings: isaOnly),
    .testTarget(name: "QoQKernelsTests", dependencies: ["QoQKernels", "QoQIO", "QoQFormat", "QoQTestSupport", "CShim"], swiftSettings: isaOnly),
    .testTarget(name: "QoQIOTests", dependencies: ["QoQIO"], swiftSettings: isaOnly),
    .testTarget(name: "QoQTokenizersTests", dependencies: ["QoQTokenizers", "QoQIO"], swiftSettings: isaOnly),
    // Tiny in-memory models of every family and a plain Double-precision reference forward, shared by tests.
    .target(name: "QoQTestSupport", dependencies: ["QoQModels", "QoQIO", "QoQTokenizers"], path: "Tests/QoQTestSupport",
            swiftSettings: isaOnly),
    .testTarget(name: "QoQModelsTests", dependencies: ["QoQModels", "QoQIO", "QoQTestSupport"],
                swiftSettings: isaOnly),
    .testTarget(name: "QoQQuantTests", dependencies: ["QoQQuant", "QoQFormat", "QoQModels", "QoQIO", "QoQKernels", "QoQTokenizers", "QoQTestSupport"],
                swiftSettings: isaOnly),
    .testTarget(name: "QoQSchedulerTests", dependencies: ["QoQScheduler", "QoQIO"], swiftSettings: isaOnly),
    .testTarget(name: "QoQEngineTests", dependencies: ["QoQEngine", "QoQScheduler", "QoQFormat", "QoQQuant", "QoQModels", "QoQKernels", "QoQIO", "QoQEval",
                                                      "QoQTokenizers", "QoQTestSupport"],
                swiftSettings: isaOnly),
    .testTarget(name: "QoQServingTests", dependencies: ["QoQServing", "QoQServer", "QoQEngine", "QoQScheduler", "QoQModels", "QoQIO",
                                                       "QoQTokenizers", "QoQTestSupport",
                                                       .product(name: "AsyncHTTPClient", package: "async-http-client"),
                                                       .product(name: "Hummingbird", package: "hummingbird"),
                                                       .product(name: "NIOCore", package: "swift-nio"),
                                                       .product(name: "ServiceLifecycle", package: "swift-service-lifecycle")],
                swiftSettings: isaOnly),
    .testTarget(name: "QoQInteropTests", dependencies: ["QoQInterop", "QoQFormat", "QoQQuant", "QoQIO", "QoQModels", "QoQTestSupport",
                                                       "QoQTokenizers"],
                swiftSettings: isaOnly),
    // Hostile input, class by class (issue #13): the real binary, files built to break it, the server under abuse.
    .testTarget(name: "QoQHardeningTests", dependencies: ["QoQIO", "QoQModels", "QoQTokenizers", "QoQQuant", "QoQEval", "QoQFormat",
                                                        "QoQScheduler", "QoQHub", "QoQKernels", "QoQTestSupport"],
                swiftSettings: isaOnly),
    .testTarget(name: "QoQEvalTests", dependencies: ["QoQEval", "QoQModels", "QoQTokenizers", "QoQIO", "QoQTestSupport"],
                swiftSettings: isaOnly),
  ]
)
