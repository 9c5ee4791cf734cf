// Models by name (issue #16): before a command runs, each model it names that is a Hugging Face id (ORG/NAME) and is
// neither a local path nor in the hub cache is downloaded into the cache (QoQHub), with progress on stderr. The
// command then opens it from the cache like any other cached model.
import ArgumentParser
import Foundation
import QoQHub
import QoQIO

/// A command that opens models given on its command line.
protocol NamedModels { var modelNames: [String] { get } }

extension EvalCommand: NamedModels { var modelNames: [String] { [modelPath] } }
extension GenerateCommand: NamedModels { var modelNames: [String] { [modelPath] } }
extension ChatCommand: NamedModels { var modelNames: [String] { [modelPath] } }
extension ServeCommand: NamedModels { var modelNames: [String] { [modelPath] } }
extension TokenizeCommand: NamedModels { var modelNames: [String] { [modelPath] } }
extension TableCommand: NamedModels { var modelNames: [String] { [modelPath] } }
extension BenchCommand: NamedModels { var modelNames: [String] { modelPath.map { [$0] } ?? [] } }
extension QuantizeCommand: NamedModels {
  /// The value of --model-path / -m / --model among the recipe flags (a recipe file's model.path is resolved later,
  /// from the cache only).
  var modelNames: [String] {
    zip(args, args.dropFirst()).compactMap { ["--model-path", "-m", "--model"].contains($0) ? $1 : nil }
  }
}

/// Downloads what `command` names and the cache lacks; errors are printed as one line and exit 1.
func fetchNamedModels(_ command: Any) async throws {
  guard let named = command as? NamedModels else { return }
  var hub = HubDownload()
  hub.log = { note($0) }
  hub.progress = { file, done, total in
    let mb = { (b: Int64) in String(format: "%.1f", Double(b) / 1_048_576) }
    let bar = total > 0 ? Progress.bar(Int(done >> 10), Int(total >> 10)) + " " : ""
    Progress.update("download \(file) \(bar)\(mb(done))" + (total > 0 ? " of \(mb(total)) MB" : " MB"))
    if total > 0 && done >= total { Progress.done() }
  }
  for m in named.modelNames {
    do { try await hub.ensure(m) } catch let e as QoQError {
      FileHandle.standardError.write(Data("error: \(e.message)\n".utf8))
      throw ExitCode(1)
    }
  }
}
