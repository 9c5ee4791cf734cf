// Models by name (issue #16): `-m ORG/NAME[@REVISION]` resolves in the Hugging Face hub cache the way transformers,
// vLLM and mlx-lm find a downloaded model, so a model fetched with any of them (or `huggingface-cli download`) opens
// without a path. Cache root: HF_HUB_CACHE, else HF_HOME/hub, else ~/.cache/huggingface/hub. Layout:
//   ROOT/models--ORG--NAME/refs/REVISION   (a file holding the commit hash; REVISION defaults to main)
//   ROOT/models--ORG--NAME/snapshots/HASH/ (the files, usually links into blobs/)
// A snapshot with config.json is a Hugging Face folder; one without it but with exactly one .gguf is that file.
// Downloading is QoQHub's (the CLI fetches a missing model before a command runs); here a model that is not in the
// cache is refused with the command that fetches it.
import Foundation
import QoQIO

public enum HubCache {
  /// The cache root for an environment.
  public static func root(_ env: [String: String]) -> String {
    if let c = env["HF_HUB_CACHE"], !c.isEmpty { return c }
    if let h = env["HF_HOME"], !h.isEmpty { return h + "/hub" }
    return (env["HOME"] ?? NSHomeDirectory()) + "/.cache/huggingface/hub"
  }

  /// Whether `s` reads as a hub id: ORG/NAME with an optional @REVISION, each part of letters, digits, '-', '_', '.'.
  public static func isHubID(_ s: String) -> Bool {
    let base = s.split(separator: "@", maxSplits: 1).first.map(String.init) ?? s
    let parts = base.split(separator: "/", omittingEmptySubsequences: false)
    guard parts.count == 2, !s.hasPrefix("."), !s.hasPrefix("/") else { return false }
    let ok = CharacterSet.alphanumerics.union(CharacterSet(charactersIn: "-_."))
    return parts.allSatisfy { p in !p.isEmpty && p != "." && p != ".." && p.unicodeScalars.allSatisfy { ok.contains($0) } }
  }

  /// An existing path is returned as it is; a hub id is resolved in the cache (or refused with the reason); anything
  /// else is returned unchanged for the caller to report.
  public static func resolve(_ path: String, env: [String: String] = ProcessInfo.processInfo.environment) throws -> String {
    let fm = FileManager.default
    if fm.fileExists(atPath: path) || !isHubID(path) { return path }
    let at = path.split(separator: "@", maxSplits: 1).map(String.init)
    let id = at[0], revision = at.count > 1 ? at[1] : "main"
    let rootDir = root(env)
    let repo = rootDir + "/models--" + id.replacingOccurrences(of: "/", with: "--")
    let fetch = "download it first (`huggingface-cli download \(id)`, or transformers/mlx-lm with network access), or pass a folder"
    guard fm.fileExists(atPath: repo) else {
      throw QoQError("\(path): not a file or folder here, and not in the Hugging Face cache (\(rootDir)); \(fetch)")
    }
    var hash = revision
    if let ref = try? String(contentsOfFile: repo + "/refs/" + revision, encoding: .utf8) {
      hash = ref.trimmingCharacters(in: .whitespacesAndNewlines)
    }
    guard !hash.isEmpty, !hash.contains("/"), hash != "..", hash != "." else { throw QoQError("\(repo)/refs/\(revision): not a revision") }
    let snap = repo + "/snapshots/" + hash
    guard fm.fileExists(atPath: snap) else {
      throw QoQError("\(path): revision \(revision) is not in the Hugging Face cache (\(repo)/snapshots/\(hash) is missing); \(fetch)")
    }
    if fm.fileExists(atPath: snap + "/config.json") { return snap }
    let ggufs = ((try? fm.contentsOfDirectory(atPath: snap)) ?? []).filter { $0.hasSuffix(".gguf") }.sorted()
    if ggufs.count == 1 { return snap + "/" + ggufs[0] }
    if ggufs.count > 1 {
      throw QoQError("\(path): the cached snapshot holds several GGUF files (\(ggufs.joined(separator: ", "))); pass one: \(snap)/FILE.gguf")
    }
    throw QoQError("\(path): the cached snapshot \(snap) has neither config.json nor a .gguf file")
  }
}
