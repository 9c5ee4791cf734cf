// Class 1 of the hardening issue: outputs never destroy what qoq did not write. Each case builds the situation that
// used to lose data (quantize --save-model deleting an existing folder, a file, or the input model; convert --force
// deleting any folder), runs the real binary, and checks the exit status, the message and that the bystander is
// still there byte for byte.
import Foundation
import Testing
@testable import QoQIO
import QoQModels
import QoQTestSupport

@Suite(.serialized) struct OutputFolderTests {
  enum Target { case file, foreignFolder, emptyFolder, symlinkToFolder, inputItself, parentOfInput, underAFile }

  struct Case: CustomStringConvertible {
    var target: Target
    var force: Bool
    var ok: Bool
    var message: String
    var description: String { "\(target) force=\(force)" }
  }

  static let cases: [Case] = [
    Case(target: .file, force: false, ok: false, message: "is a file"),
    Case(target: .file, force: true, ok: false, message: "is a file"),
    Case(target: .foreignFolder, force: false, ok: false, message: "not empty"),
    Case(target: .foreignFolder, force: true, ok: false, message: "did not write"),
    Case(target: .symlinkToFolder, force: true, ok: false, message: "symbolic link"),
    Case(target: .inputItself, force: true, ok: false, message: "is the input"),
    Case(target: .parentOfInput, force: true, ok: false, message: "is the input"),
    Case(target: .underAFile, force: false, ok: false, message: "cannot create folder"),
    Case(target: .emptyFolder, force: false, ok: true, message: ""),
  ]

  /// Lays out the situation; returns the output path and a bystander path whose bytes must survive.
  func setUp(_ t: Target, in dir: String, model: String) -> (output: String, bystander: String) {
    let fm = FileManager.default
    switch t {
    case .file:
      write("precious notes\n", to: dir + "/notes.txt")
      return (dir + "/notes.txt", dir + "/notes.txt")
    case .foreignFolder:
      write("thesis draft\n", to: dir + "/work/thesis.txt")
      return (dir + "/work", dir + "/work/thesis.txt")
    case .emptyFolder:
      try? fm.createDirectory(atPath: dir + "/empty", withIntermediateDirectories: true)
      write("unrelated\n", to: dir + "/beside.txt")
      return (dir + "/empty", dir + "/beside.txt")
    case .symlinkToFolder:
      write("behind the link\n", to: dir + "/real/data.txt")
      try? fm.createSymbolicLink(atPath: dir + "/link", withDestinationPath: dir + "/real")
      return (dir + "/link", dir + "/real/data.txt")
    case .inputItself:
      return (model, model + "/config.json")
    case .parentOfInput:
      return (URL(fileURLWithPath: model).deletingLastPathComponent().path, model + "/model.safetensors")
    case .underAFile:
      write("a plain file\n", to: dir + "/plain")
      return (dir + "/plain/out", dir + "/plain")
    }
  }

  static func tinyModel(_ dir: String) throws -> String {
    let c = try LlamaConfiguration(modelType: "llama", hiddenSize: 64, intermediateSize: 128, numHiddenLayers: 2,
                                   numAttentionHeads: 4, numKeyValueHeads: 2, rmsNormEps: 1e-5, vocabSize: 300)
    try writeTinyCheckpoint(c, to: dir + "/models/tiny")
    return dir + "/models/tiny"
  }

  static func quantizeArgs(_ model: String, save: String) -> [String] {
    ["quantize", repoRoot + "/recipes/rtn-w4a16-g64.yaml", "--model-path", model, "--skip-eval", "--cache-root", "none",
     "--save-model", save, "--output-root", NSTemporaryDirectory() + "qoq-hard-runs"]
  }

  /// `qoq quantize --save-model` and `qoq convert -o` against every kind of existing target.
  @Test(arguments: cases) func existingTargets(_ c: Case) async throws {
    for command in ["quantize", "convert"] {
      let dir = scratch("out-\(command)-\(c.target)-\(c.force)")
      let model = try Self.tinyModel(dir)
      let (output, bystander) = setUp(c.target, in: dir, model: model)
      let before = FileManager.default.contents(atPath: bystander)
      var args = command == "quantize" ? Self.quantizeArgs(model, save: output)
        : ["convert", model, "--to", "tinychat", "-o", output]
      if c.force { args.append("--force") }
      let r = try await runQoQ(args)
      #expect(!r.crashed, "\(command) \(c): crashed")
      #expect(FileManager.default.contents(atPath: bystander) == before, "\(command) \(c): \(bystander) changed or vanished")
      if c.ok {
        if command == "quantize" {
          #expect(r.status == 0, "\(command) \(c): \(r.stderr)")
          #expect(FileManager.default.fileExists(atPath: output + "/" + OutputFolder.marker))
          #expect(FileManager.default.fileExists(atPath: output + "/results.json"))
        }
      } else {
        #expect(r.status == 1, "\(command) \(c): exit \(r.status)")
        #expect(r.stderr.contains(c.message), "\(command) \(c): \(r.stderr)")
        let lines = r.stderr.split(separator: "\n").filter { $0.hasPrefix("error:") }
        #expect(lines.count == 1, "\(command) \(c): one error line expected: \(r.stderr)")
      }
      // Nothing is left behind beside the target: no temporary or old folders.
      let parent = URL(fileURLWithPath: output).deletingLastPathComponent().path
      let leftovers = ((try? FileManager.default.contentsOfDirectory(atPath: parent)) ?? []).filter { $0.contains(".tmp-") || $0.contains(".old-") }
      #expect(leftovers.isEmpty, "\(command) \(c): left \(leftovers)")
    }
  }

  /// A folder qoq wrote is refused without --force and replaced with it; the replacement is complete.
  @Test func forceReplacesOnlyOurOwnFolder() async throws {
    let dir = scratch("own")
    let model = try Self.tinyModel(dir)
    let save = dir + "/q"
    let first = try await runQoQ(Self.quantizeArgs(model, save: save))
    #expect(first.status == 0, "\(first.stderr)")
    #expect(FileManager.default.fileExists(atPath: save + "/" + OutputFolder.marker))
    write("stale\n", to: save + "/stale.txt")
    let again = try await runQoQ(Self.quantizeArgs(model, save: save))
    #expect(again.status == 1 && again.stderr.contains("--force"), "\(again.stderr)")
    #expect(read(save + "/stale.txt") == "stale\n")
    let forced = try await runQoQ(Self.quantizeArgs(model, save: save) + ["--force"])
    #expect(forced.status == 0, "\(forced.stderr)")
    #expect(!FileManager.default.fileExists(atPath: save + "/stale.txt"), "the old folder was replaced as a whole")
    #expect(FileManager.default.fileExists(atPath: save + "/model.safetensors"))
    // The marker is what --force requires: remove it and the folder is no longer ours.
    try FileManager.default.removeItem(atPath: save + "/" + OutputFolder.marker)
    let unmarked = try await runQoQ(Self.quantizeArgs(model, save: save) + ["--force"])
    #expect(unmarked.status == 1 && unmarked.stderr.contains("did not write"), "\(unmarked.stderr)")
    #expect(FileManager.default.fileExists(atPath: save + "/model.safetensors"))
  }

  /// The library call: a body that fails leaves the old folder untouched and no temporary folder behind.
  @Test func failedBodyLeavesOldFolder() throws {
    let dir = scratch("fail")
    try OutputFolder.write(dir + "/o", force: false) { tmp in write("v1\n", to: tmp + "/a.txt") }
    #expect(read(dir + "/o/a.txt") == "v1\n")
    #expect(throws: QoQError.self) {
      try OutputFolder.write(dir + "/o", force: true) { tmp in
        write("v2\n", to: tmp + "/a.txt")
        throw QoQError("disk full (simulated)")
      }
    }
    #expect(read(dir + "/o/a.txt") == "v1\n")
    #expect(try FileManager.default.contentsOfDirectory(atPath: dir).sorted() == ["o"])
    try OutputFolder.write(dir + "/o", force: true) { tmp in write("v3\n", to: tmp + "/a.txt") }
    #expect(read(dir + "/o/a.txt") == "v3\n")
    // `qoq table`'s working folder: created with the marker, reused, a foreign one refused.
    try OutputFolder.claim(dir + "/table", command: "table")
    try OutputFolder.claim(dir + "/table", command: "table")
    write("mine\n", to: dir + "/mine/x.txt")
    #expect(throws: QoQError.self) { try OutputFolder.claim(dir + "/mine", command: "table") }
    #expect(read(dir + "/mine/x.txt") == "mine\n")
  }
}
