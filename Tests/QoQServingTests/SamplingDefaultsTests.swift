import Foundation
import Testing
import QoQIO
import QoQServing

/// Sampling defaults from the model's generation_config.json (issue #16), applied only where a request is silent.
@Suite struct SamplingDefaultsTests {
  func folder(_ json: String?) throws -> String {
    let d = NSTemporaryDirectory() + "qoq-gencfg-\(UInt64.random(in: 0..<UInt64.max))"
    try FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true)
    if let j = json { try j.write(toFile: d + "/generation_config.json", atomically: true, encoding: .utf8) }
    return d
  }

  @Test func defaultsFromTheModelApplyWhereTheRequestIsSilent() throws {
    let d = try SamplingDefaults.load(folder: try folder(#"{"do_sample": true, "temperature": 0.6, "top_p": 0.9, "top_k": 20, "repetition_penalty": 1.05, "eos_token_id": 2}"#))
    #expect(d.temperature == 0.6 && d.topP == 0.9 && d.topK == 20 && d.repetitionPenalty == 1.05 && d.minP == 0)
    var limits = ServingLimits(); limits.defaults = d
    let silent = try OpenAIParse.chat(Data(#"{"messages":[{"role":"user","content":"hi"}]}"#.utf8), limits: limits)
    #expect(silent.params.temperature == 0.6 && silent.params.topP == 0.9 && silent.params.topK == 20)
    #expect(abs(silent.params.repetitionPenalty - 1.05) < 1e-6)
    let explicit = try OpenAIParse.chat(Data(#"{"messages":[{"role":"user","content":"hi"}],"temperature":0,"top_k":0}"#.utf8), limits: limits)
    #expect(explicit.params.temperature == 0 && explicit.params.topK == 0 && explicit.params.topP == 0.9)
    // No file: OpenAI's defaults.
    #expect(try SamplingDefaults.load(folder: try folder(nil)) == SamplingDefaults())
    let plain = try OpenAIParse.chat(Data(#"{"messages":[{"role":"user","content":"hi"}]}"#.utf8), limits: ServingLimits())
    #expect(plain.params.temperature == 1 && plain.params.topP == 1)
  }

  @Test func badValuesAreNamed() throws {
    for (json, key) in [(#"{"top_p": 5}"#, "top_p"), (#"{"temperature": -1}"#, "temperature"), (#"{"top_k": 2.5}"#, "top_k"),
                        (#"{"repetition_penalty": "x"}"#, "repetition_penalty")] {
      do { _ = try SamplingDefaults.load(folder: try folder(json)); Issue.record("\(json) accepted") } catch {
        #expect("\(error)".contains(key), "\(error)")
      }
    }
    #expect(throws: (any Error).self) { try SamplingDefaults.load(folder: try folder("{not json")) }
  }
}
