import Foundation
import Testing
@testable import QoQIO

@Suite struct JSONTests {
  @Test func parsesAndWritesRoundTrip() throws {
    let text = #"{"a": [1, -2, 3.5, true, false, null], "b": {"c": "h\u00e9\n\"x\"", "d": []}, "e": "\ud83d\ude00"}"#
    let v = try JSON.parse(text, what: "t")
    #expect(v["a"]?.array?.count == 6)
    #expect(v["a"]?.array?[1].int == -2)
    #expect(v["a"]?.array?[2].double == 3.5)
    #expect(v["b"]?["c"]?.string == "hé\n\"x\"")
    #expect(v["e"]?.string == "😀")
    #expect(try JSON.parse(JSON.serialize(v), what: "re") == v)
    #expect(try JSON.parse(JSON.serialize(v, pretty: true), what: "re") == v)
    #expect(v.object?.keys == ["a", "b", "e"])
  }

  @Test func rejectsBadDocuments() {
    let cases: [(String, String)] = [
      (#"{"a": 1, "a": 2}"#, "duplicate key"),
      (String(repeating: "[", count: 200) + String(repeating: "]", count: 200), "nesting"),
      (#"{"a": 1} x"#, "trailing"),
      (#"{"a": }"#, "unexpected character"),
      (#"{"a": "unterminated"#, "unterminated"),
      (#"{"a": "\q"}"#, "unknown escape"),
      (#"{"a": NaN}"#, "unexpected character"),
      (#"{"a": 1e999}"#, "bad number"),
      ("{\"a\": \"\u{1}\"}", "control character"),
      ("", "unexpected end"),
    ]
    var failures: [String] = []
    for (text, needle) in cases {
      if let f = expectError(needle, text, { _ = try JSON.parse(text, what: "t") }) { failures.append(f) }
    }
    // Invalid UTF-8 inside a string.
    let bad: [UInt8] = Array(#"{"a": ""#.utf8) + [0xFF, 0xFE] + Array(#""}"#.utf8)
    if let f = expectError("UTF-8", "bad utf8", { _ = try bad.withUnsafeBytes { try JSON.parse($0, what: "t") } }) { failures.append(f) }
    #expect(failures.isEmpty, "\(failures)")
  }
}

@Suite struct SHA256Tests {
  @Test func knownVectors() {
    #expect(sha256Hex(Array("abc".utf8)) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
    #expect(sha256Hex([UInt8]()) == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
    #expect(sha256Hex(Array(String(repeating: "a", count: 1000).utf8)) == "41edece42d63e8d9bf515a9ba6932e1c20cbc9f5a5d134645adb5db1b9737ea3")
  }
}
