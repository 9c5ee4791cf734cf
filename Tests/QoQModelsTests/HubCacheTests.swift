import Foundation
import Testing
import QoQIO
@testable import QoQModels
import QoQTestSupport

/// `-m ORG/NAME` through the Hugging Face hub cache (issue #16), on a cache layout built here the way
/// huggingface_hub writes it (refs/REVISION holding a commit hash, snapshots/HASH/ holding the files).
@Suite struct HubCacheTests {
  func layout() throws -> String {
    let root = NSTemporaryDirectory() + "qoq-hub-\(UInt64.random(in: 0..<UInt64.max))"
    let fm = FileManager.default
    let repo = root + "/models--acme--tiny-llama"
    try fm.createDirectory(atPath: repo + "/refs", withIntermediateDirectories: true)
    try "0123abc\n".write(toFile: repo + "/refs/main", atomically: true, encoding: .utf8)
    try "4567def".write(toFile: repo + "/refs/v2", atomically: true, encoding: .utf8)
    let c = try LlamaConfiguration(modelType: "llama", hiddenSize: 64, intermediateSize: 96, numHiddenLayers: 1, numAttentionHeads: 2,
                                   numKeyValueHeads: 1, headDim: 32, rmsNormEps: 1e-5, vocabSize: 90)
    try writeTinyCheckpoint(c, to: repo + "/snapshots/0123abc")
    try writeTinyCheckpoint(c, to: repo + "/snapshots/4567def")
    let gg = root + "/models--acme--tiny-gguf/snapshots/99"
    try fm.createDirectory(atPath: gg, withIntermediateDirectories: true)
    try fm.createDirectory(atPath: root + "/models--acme--tiny-gguf/refs", withIntermediateDirectories: true)
    try "99".write(toFile: root + "/models--acme--tiny-gguf/refs/main", atomically: true, encoding: .utf8)
    try Data([0x47, 0x47, 0x55, 0x46]).write(to: URL(fileURLWithPath: gg + "/tiny-q4_0.gguf"))
    let evil = root + "/models--acme--evil/refs"
    try fm.createDirectory(atPath: evil, withIntermediateDirectories: true)
    try "../../../etc".write(toFile: evil + "/main", atomically: true, encoding: .utf8)
    return root
  }

  @Test func resolvesIdsInTheCache() throws {
    let root = try layout()
    let env = ["HF_HUB_CACHE": root]
    #expect(try HubCache.resolve("acme/tiny-llama", env: env) == root + "/models--acme--tiny-llama/snapshots/0123abc")
    #expect(try HubCache.resolve("acme/tiny-llama@v2", env: env) == root + "/models--acme--tiny-llama/snapshots/4567def")
    #expect(try HubCache.resolve("acme/tiny-llama@4567def", env: env) == root + "/models--acme--tiny-llama/snapshots/4567def")
    #expect(try HubCache.resolve("acme/tiny-gguf", env: env) == root + "/models--acme--tiny-gguf/snapshots/99/tiny-q4_0.gguf")
    // The resolved folder opens as a model.
    let src = try ModelLoader.open(path: try HubCache.resolve("acme/tiny-llama", env: env))
    #expect(src.config.hiddenSize == 64)
    // HF_HOME/hub when HF_HUB_CACHE is not set; ~/.cache/huggingface/hub from HOME otherwise.
    let home = NSTemporaryDirectory() + "qoq-hfhome-\(UInt64.random(in: 0..<UInt64.max))"
    try FileManager.default.createDirectory(atPath: home, withIntermediateDirectories: true)
    try FileManager.default.createSymbolicLink(atPath: home + "/hub", withDestinationPath: root)
    #expect(try HubCache.resolve("acme/tiny-llama", env: ["HF_HOME": home]).hasSuffix("/snapshots/0123abc"))
    #expect(HubCache.root(["HOME": "/h"]) == "/h/.cache/huggingface/hub")
  }

  @Test func pathsAndOtherStringsAreLeftAlone() throws {
    let root = try layout()
    let env = ["HF_HUB_CACHE": root]
    for s in ["/abs/model", "./a/b", "a/b/c", "model.gguf", "../x/y", "a/", "/a"] {
      #expect(try HubCache.resolve(s, env: env) == s, "\(s)")
    }
    // An existing relative folder named like an id is a path, not an id.
    let cwd = FileManager.default.currentDirectoryPath
    let rel = "qoq-rel-\(UInt64.random(in: 0..<UInt64.max))"
    try FileManager.default.createDirectory(atPath: cwd + "/" + rel + "/m", withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(atPath: cwd + "/" + rel) }
    #expect(try HubCache.resolve(rel + "/m", env: env) == rel + "/m")
  }

  @Test func missingAndHostileEntriesAreRefused() throws {
    let root = try layout()
    let env = ["HF_HUB_CACHE": root]
    func message(_ id: String) -> String {
      do { _ = try HubCache.resolve(id, env: env); return "" } catch { return "\(error)" }
    }
    #expect(message("acme/missing").contains("not in the Hugging Face cache") && message("acme/missing").contains("huggingface-cli download acme/missing"))
    #expect(message("acme/tiny-llama@nope").contains("revision nope"))
    #expect(message("acme/evil").contains("not a revision"))
  }
}
