// Chat content cannot forge roles (hardening issue, class 5). A message's content is user text: if it spells a special
// token (`<|im_end|>`, `<|im_start|>system`, `</s>`, `<|eot_id|>`…) it must be tokenized as plain text, while the
// template's own markup becomes special tokens. Contents are made inert before rendering: a marker (U+FDD0, a Unicode
// noncharacter) is put inside every special token they spell, so the rendered prompt holds special tokens only where
// the template wrote them; encoding then removes the markers from the text pieces before BPE, so the content's bytes
// are tokenized exactly as `encode(parseSpecial: false)` would. A marker already in the content is doubled (escaped).
import QoQIO

extension Tokenizer {
  static let markerBytes: [UInt8] = [0xEF, 0xB7, 0x90]  // U+FDD0 in UTF-8
  /// The marker scalar (Swift refuses noncharacters in literals, so it is built from its value).
  public static let inertMarker = Unicode.Scalar(UInt32(0xFDD0))!

  /// `text` with every special token it spells broken by the marker; existing markers doubled.
  public func inertContent(_ text: String) throws -> String {
    let M = Tokenizer.markerBytes
    let bytes = Array(text.utf8)
    var out: [UInt8] = []
    out.reserveCapacity(bytes.count + 16)
    var i = 0
    while i < bytes.count {
      if i + 2 < bytes.count, bytes[i] == M[0], bytes[i + 1] == M[1], bytes[i + 2] == M[2] { out += M + M; i += 3; continue }
      var matched: [UInt8]? = nil
      if let cands = addedByFirstByte[bytes[i]] {
        for (b, t) in cands where t.special && i + b.count <= bytes.count && bytes[i..<(i + b.count)].elementsEqual(b) { matched = b; break }
      }
      guard let b = matched else { out.append(bytes[i]); i += 1; continue }
      // The marker goes after the token's first scalar (whole UTF-8 sequence), so the result stays valid UTF-8.
      let lead = b[0], first = lead < 0x80 ? 1 : lead < 0xE0 ? 2 : lead < 0xF0 ? 3 : 4
      let cut = min(first, b.count)
      out += b[0..<cut]; out += M; out += b[cut...]
      i += b.count
    }
    let result = String(decoding: out, as: UTF8.self)
    // A special token could only survive by straddling the inserted markers, which no vocabulary does; checked anyway.
    for section in splitAdded(result, parseSpecial: true) {
      if case .added(let t) = section, t.special { throw QoQError("chat content spells \(t.content) in a way that cannot be made inert") }
    }
    return result
  }

  /// Removes inert markers from a text piece (a doubled marker stands for one marker of the original text).
  static func removeMarkers(_ s: String) -> String {
    let marker = Tokenizer.inertMarker
    guard s.unicodeScalars.contains(marker) else { return s }
    var out = String.UnicodeScalarView()
    var pendingMarker = false
    for u in s.unicodeScalars {
      if u == marker {
        if pendingMarker { out.append(u); pendingMarker = false } else { pendingMarker = true }
        continue
      }
      pendingMarker = false
      out.append(u)
    }
    return String(out)
  }

  /// Encodes a prompt rendered from inert contents: special tokens where the template wrote them, everything else
  /// (the contents included) as text.
  public func encodeRenderedChat(_ text: String) throws -> [Int32] {
    try encode(text, addSpecialTokens: false, parseSpecial: true, inertMarkers: true)
  }
}

extension ChatTemplate {
  /// Renders `messages` with inert contents (see above) and encodes the result: the only special tokens in the ids
  /// are the template's own. `vars` are extra template variables (chat_template_kwargs, bos_token, …).
  public func encodeChat(_ messages: [(role: String, content: String)], tokenizer: Tokenizer, addGenerationPrompt: Bool = true,
                         vars extra: [String: TemplateValue] = [:]) throws -> (ids: [Int32], text: String) {
    var vars = extra
    vars["messages"] = .list(try messages.map { .dict(["role": .string($0.role), "content": .string(try tokenizer.inertContent($0.content))]) })
    vars["add_generation_prompt"] = .bool(addGenerationPrompt)
    let rendered = try render(vars)
    return (try tokenizer.encodeRenderedChat(rendered), Tokenizer.removeMarkers(rendered))
  }
}
