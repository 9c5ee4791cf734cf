// Evaluation text files (issue #16): WikiText-2's raw files get the GPTQ protocol's row join; any other text is read
// as one string (what `tokenizer(open(f).read())` sees); JSON Lines take each object's "text" field, joined by "\n\n".
// The format is detected from the file (or forced) and printed, so a non-WikiText file is never silently rewritten.
import Foundation
import QoQIO
import QoQTokenizers

public enum DatasetFormat: String, CaseIterable, Sendable {
  /// wiki.{test,valid,train}.raw: rows joined by "\n\n" (blank " \n" rows become empty), as HF `datasets` gives them.
  case wikitext
  /// The whole file as one string.
  case text
  /// One JSON object per line with a string field "text"; the texts joined by "\n\n".
  case jsonl
}

public struct EvalDataset: Sendable {
  public let path: String
  public let format: DatasetFormat
  /// The file as read (the llama.cpp protocol tokenizes this).
  public let raw: String
  /// The text the GPTQ protocol tokenizes once.
  public let gptqText: String

  /// Reads `path`; `format` nil detects it: `.jsonl` → jsonl; a `.raw` file, or one that starts with a WikiText heading
  /// (" = Title = ") and has WikiText's " " blank lines → wikitext; anything else → text.
  public init(path: String, format: DatasetFormat? = nil) throws {
    guard let data = FileManager.default.contents(atPath: path) else { throw QoQError("\(path): cannot read the dataset") }
    guard let s = String(data: data, encoding: .utf8) else { throw QoQError("\(path): the dataset is not UTF-8 text") }
    self.path = path
    let f = format ?? Self.detect(path: path, text: s)
    self.format = f
    switch f {
    case .wikitext: raw = s; gptqText = wikitextGPTQText(raw: s)
    case .text: raw = s; gptqText = s
    case .jsonl:
      var texts: [String] = []
      for (n, line) in s.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
        if line.allSatisfy({ $0 == " " || $0 == "\t" || $0 == "\r" }) { continue }
        let v: JSONValue
        do { v = try JSON.parse(String(line), what: "\(path):\(n + 1)") } catch { throw QoQError("\(path):\(n + 1): not a JSON object (\(error))") }
        guard let t = v["text"]?.string else { throw QoQError("\(path):\(n + 1): the object has no string field \"text\"") }
        texts.append(t)
      }
      guard !texts.isEmpty else { throw QoQError("\(path): no JSON lines with a \"text\" field") }
      let joined = texts.joined(separator: "\n\n")
      raw = joined; gptqText = joined
    }
  }

  static func detect(path: String, text: String) -> DatasetFormat {
    let name = (path as NSString).lastPathComponent.lowercased()
    if name.hasSuffix(".jsonl") { return .jsonl }
    if name.hasSuffix(".raw") { return .wikitext }
    // WikiText raw: its first non-blank line is a heading (" = Title = ") and its blank lines are a single space
    // (" \n"). A text already joined the GPTQ way has the heading but no such lines, so it stays text.
    let lines = text.prefix(1 << 16).split(separator: "\n", omittingEmptySubsequences: false)
    let first = lines.first { !$0.allSatisfy { $0 == " " } } ?? ""
    let heading = first.hasPrefix(" = ") && first.hasSuffix(" = ")
    return heading && lines.contains(" ") ? .wikitext : .text
  }

  /// Token ids for `proto`: GPTQ tokenizes `gptqText` once; llama.cpp's protocol the raw file.
  public func tokens(_ tokenizer: Tokenizer, proto: PerplexityProtocol) throws -> [Int32] {
    try tokenizer.encode(proto == .gptq ? gptqText : raw, addSpecialTokens: true, parseSpecial: false)
  }
}
