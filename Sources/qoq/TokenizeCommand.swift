import ArgumentParser
import Foundation
import QoQIO
import QoQModels
import QoQTokenizers

struct TokenizeCommand: ParsableCommand {
  static let configuration = CommandConfiguration(commandName: "tokenize", abstract: "Print token ids of a prompt.")
  @Option(name: [.customShort("m"), .long, .customLong("model")], help: "Model folder (tokenizer.json) or .gguf file.") var modelPath: String
  @Option(name: [.short, .long], help: "Text to tokenize.") var prompt: String
  @Flag(help: "Apply the tokenizer's post-processor (BOS/EOS).") var addSpecial = false
  @Flag(help: "Do not parse special tokens written in the text.") var noParseSpecial = false

  func run() throws {
    try runReportingErrors {
      let tok: Tokenizer
      let path = try HubCache.resolve(modelPath)  // a Hugging Face id (ORG/NAME) from the hub cache
      if path.hasSuffix(".gguf") { tok = try Tokenizer.load(gguf: GGUFFile(path: path)) }
      else { tok = try Tokenizer.load(folder: path) }
      let ids = try tok.encode(prompt, addSpecialTokens: addSpecial, parseSpecial: !noParseSpecial)
      print(ids.map(String.init).joined(separator: " "))
    }
  }
}
