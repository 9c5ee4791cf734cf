// Incremental detokenization (issue #17 item 5): a request's text is streamed in time linear in its length. Each step
// decodes only a short window of ids: the ids since the last emitted piece, plus a few before them as context
// (`prefixOffset..<readOffset`), so that what a token adds depends on its neighbours as in a full decode (byte-level
// BPE pieces that complete a UTF-8 character, SentencePiece's "▁" spaces). This is the scheme of Hugging Face TGI and
// vLLM: new text = decode(window) minus decode(context), emitted once it no longer ends in U+FFFD (a UTF-8 sequence
// still incomplete).
import Foundation

struct IncrementalDetokenizer {
  private(set) var prefixOffset = 0
  private(set) var readOffset = 0
  /// Ids passed to `decode` so far, in total: O(1) per token, whatever the length of the text (tests bound it).
  private(set) var decodedIds = 0
  /// After this many undecodable ids in a row (a model emitting broken UTF-8), their U+FFFD is emitted as it is, so
  /// the window stays short.
  static let maxPending = 8

  /// The text the newest ids of `ids` add (all of `ids` are the request's generated ids so far, oldest first), or ""
  /// while they end inside a UTF-8 sequence. `flush` emits whatever is left even so (the request ends).
  mutating func next(_ ids: ArraySlice<Int32>, flush: Bool = false, decode: ([Int32]) throws -> String) rethrows -> String {
    let base = ids.startIndex
    guard base + readOffset < ids.endIndex else { return "" }
    let context = Array(ids[(base + prefixOffset)..<(base + readOffset)])
    let window = Array(ids[(base + prefixOffset)...])
    let before = context.isEmpty ? "" : try decode(context)
    let after = try decode(window)
    decodedIds += context.count + window.count
    let b = before.unicodeScalars.count, a = after.unicodeScalars.count
    let stuck = window.count - context.count > Self.maxPending
    guard a > b && (flush || stuck || !after.hasSuffix("\u{FFFD}")) else { return "" }
    prefixOffset = readOffset
    readOffset = ids.count
    return String(after.unicodeScalars.dropFirst(b))
  }
}
