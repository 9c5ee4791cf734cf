// Recipes: deepcompressor-style YAML configs loaded in order on top of the default, then `--flag value` overrides
// (omniconfig naming: quant.wgts.calib_range.num_grids → --wgts-calib-range-num-grids). Validated before any work.
import Foundation
import QoQIO
import Yams

public struct Recipe: Sendable {
  /// The fully resolved tree (written beside the output as recipe.yaml).
  public private(set) var tree: JSONValue

  public init() throws {
    tree = try Recipe.parseYAML(defaultRecipeYAML, what: "default recipe")
  }

  /// Loads config files in order, then applies flags (["--smooth-proj-alpha", "0.05", "--enable-rotation", …]).
  public static func load(files: [String], flags: [String]) throws -> Recipe {
    var r = try Recipe()
    for f in files {
      guard let text = try? String(contentsOfFile: f, encoding: .utf8) else { throw QoQError("recipe \(f): cannot read") }
      let t = try parseYAML(text, what: f)
      guard t.object != nil || t.isNull else { throw QoQError("recipe \(f): top level must be a mapping") }
      if !t.isNull { r.tree = try merge(r.tree, t, path: "", what: f) }
    }
    try r.applyFlags(flags)
    return r
  }

  static func parseYAML(_ text: String, what: String) throws -> JSONValue {
    let node: Any?
    do { node = try Yams.load(yaml: text) } catch { throw QoQError("\(what): invalid YAML (\(error))") }
    return try toJSON(node, what: what)
  }

  static func toJSON(_ v: Any?, what: String) throws -> JSONValue {
    switch v {
    case nil, is NSNull: return .null
    case let b as Bool: return .bool(b)
    case let i as Int: return .int(i)
    case let d as Double: return .double(d)
    case let s as String: return .string(s)
    case let a as [Any]: return .array(try a.map { try toJSON($0, what: what) })
    case let d as [String: Any]:
      var o = JSONObject()
      for k in d.keys.sorted() { o[k] = try toJSON(d[k], what: what) }
      return .object(o)
    case let d as [AnyHashable: Any]:
      var o = JSONObject()
      for (k, val) in d { o["\(k)"] = try toJSON(val, what: what) }
      return .object(o)
    default: throw QoQError("\(what): unsupported YAML value \(String(describing: v))")
    }
  }

  /// Deep merge of b into a; every key of b must exist in a (the default defines the schema).
  static func merge(_ a: JSONValue, _ b: JSONValue, path: String, what: String) throws -> JSONValue {
    guard let bo = b.object else { return b }
    guard var ao = a.object else { throw QoQError("\(what): \(path) is not a section") }
    for (k, v) in bo.pairs {
      let p = path.isEmpty ? k : path + "." + k
      guard let old = ao[k] else { throw QoQError("\(what): unknown recipe field \(p)") }
      if old.object != nil {
        guard v.object != nil else { throw QoQError("\(what): \(p) must be a mapping") }
        ao[k] = try merge(old, v, path: p, what: what)
      } else {
        if v.object != nil { throw QoQError("\(what): \(p) must not be a mapping") }
        ao[k] = v
      }
    }
    return .object(ao)
  }

  /// Every leaf path with its flag name.
  static func leaves(_ v: JSONValue, _ path: [String] = []) -> [([String], String)] {
    guard let o = v.object else {
      let p = path.first == "quant" ? Array(path.dropFirst()) : path
      return [(path, "--" + p.joined(separator: "-").replacingOccurrences(of: "_", with: "-"))]
    }
    return o.pairs.flatMap { leaves($0.1, path + [$0.0]) }
  }

  func value(at path: [String]) -> JSONValue? {
    var v: JSONValue? = tree
    for k in path { v = v?[k] }
    return v
  }

  mutating func set(_ path: [String], _ newValue: JSONValue) {
    func go(_ v: JSONValue, _ p: ArraySlice<String>) -> JSONValue {
      guard let k = p.first, var o = v.object else { return newValue }
      o[k] = go(o[k] ?? .null, p.dropFirst())
      return .object(o)
    }
    tree = go(tree, path[...])
  }

  /// Flags: `--name value` (lists take several values until the next flag; group shapes as "1,-1"), `--name` for
  /// true, `--no-name` for false. Unknown flags are refused.
  public mutating func applyFlags(_ args: [String]) throws {
    let table = Dictionary(Recipe.leaves(tree).map { ($0.1, $0.0) }, uniquingKeysWith: { a, _ in a })
    var i = 0
    while i < args.count {
      let a = args[i]
      guard a.hasPrefix("--") else { throw QoQError("unexpected argument \(a)") }
      var name = a, negated = false
      if table[name] == nil, a.hasPrefix("--no-"), table["--" + a.dropFirst(5)] != nil { name = "--" + a.dropFirst(5); negated = true }
      guard let path = table[name] else {
        let close = table.keys.filter { $0.contains(a.dropFirst(2).split(separator: "-").last.map(String.init) ?? "") }.sorted().prefix(5)
        throw QoQError("unknown option \(a)\(close.isEmpty ? "" : " (did you mean \(close.joined(separator: ", "))?)")")
      }
      let old = value(at: path) ?? .null
      var vals: [String] = []
      var j = i + 1
      // Values run to the next "--flag"; a value may start with one "-" (a negative number, or " -2" quoted the
      // way deepcompressor's docs write it).
      while j < args.count && !args[j].hasPrefix("--") { vals.append(args[j]); j += 1 }
      if case .bool = old, vals.isEmpty {
        set(path, .bool(!negated))
      } else if case .bool = old {
        guard vals.count == 1, let b = Bool(vals[0].lowercased()) else { throw QoQError("\(a) takes true or false") }
        set(path, .bool(b))
      } else if case .array = old {
        set(path, .array(try vals.map { try Recipe.parseFlagValue($0, listElementOf: old, flag: a) }))
      } else {
        guard vals.count == 1 else { throw QoQError("\(a) takes one value (got \(vals.count))") }
        set(path, try Recipe.parseFlagValue(vals[0], scalarLike: old, flag: a))
      }
      i = j
    }
  }

  static func parseFlagValue(_ s: String, scalarLike old: JSONValue, flag: String) throws -> JSONValue {
    let t = s.trimmingCharacters(in: .whitespaces)
    if case .string = old, t == "null" || t == "none" { return .null }  // e.g. --wgts-dtype null turns weights off
    switch old {
    case .int:
      if let i = Int(t) { return .int(i) }
      if let d = Double(t), d.isFinite { return .double(d) }
      throw QoQError("\(flag) takes a number (got \"\(s)\")")
    case .double:
      if let d = Double(t), d.isFinite { return .double(d) }
      throw QoQError("\(flag) takes a number (got \"\(s)\")")
    case .null:
      if t == "null" || t == "none" { return .null }
      if let i = Int(t) { return .int(i) }
      return .string(t)
    default:
      return .string(t)
    }
  }

  static func parseFlagValue(_ s: String, listElementOf old: JSONValue, flag: String) throws -> JSONValue {
    let t = s.trimmingCharacters(in: .whitespaces)
    if t.contains(",") || (old.array?.first?.array != nil) {
      let parts = t.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }
      // A list of names (smoothing spans: --smooth-proj-spans RootMeanSquare,AbsMax).
      if old.array?.first?.array?.first?.string != nil { return .array(parts.map { .string($0) }) }
      return .array(try parts.map { p in
        guard let i = Int(p) else { throw QoQError("\(flag): \"\(s)\" is not a list of integers like 1,-1") }
        return .int(i)
      })
    }
    if t == "null" || t == "none" { return .null }
    if let i = Int(t) { return .int(i) }
    if let d = Double(t) { return .double(d) }
    return .string(t)
  }

  // MARK: - Typed access

  public func string(_ path: String) throws -> String? {
    let v = value(at: path.split(separator: ".").map(String.init))
    if v == nil || v!.isNull { return nil }
    guard let s = v!.string else { throw QoQError("recipe field \(path) must be a string") }
    return s
  }
  public func int(_ path: String) throws -> Int {
    guard let v = value(at: path.split(separator: ".").map(String.init))?.int else { throw QoQError("recipe field \(path) must be an integer") }
    return v
  }
  public func double(_ path: String) throws -> Double {
    guard let v = value(at: path.split(separator: ".").map(String.init))?.double else { throw QoQError("recipe field \(path) must be a number") }
    return v
  }
  public func bool(_ path: String) throws -> Bool {
    guard let v = value(at: path.split(separator: ".").map(String.init))?.bool else { throw QoQError("recipe field \(path) must be true or false") }
    return v
  }
  public func strings(_ path: String) throws -> [String] {
    guard let a = value(at: path.split(separator: ".").map(String.init))?.array else { throw QoQError("recipe field \(path) must be a list") }
    return try a.map { v in
      if v.isNull { return "null" }
      guard let s = v.string else { throw QoQError("recipe field \(path) must be a list of strings") }
      return s
    }
  }
  /// deepcompressor's smoothing `spans`: a list of (activation span mode, weight span mode) pairs.
  public func spanPairs(_ path: String) throws -> [(String, String)] {
    guard let a = value(at: path.split(separator: ".").map(String.init))?.array else { throw QoQError("recipe field \(path) must be a list") }
    return try a.map { e in
      guard let pair = e.array, pair.count == 2, let x = pair[0].string, let w = pair[1].string else {
        throw QoQError("recipe field \(path): each span is [activation mode, weight mode], e.g. [AbsMax, AbsMax]")
      }
      return (x, w)
    }
  }
  public func groupShapes(_ path: String) throws -> [[Int]] {
    guard let a = value(at: path.split(separator: ".").map(String.init))?.array else { throw QoQError("recipe field \(path) must be a list") }
    return try a.map { e in
      guard let pair = e.array, pair.count == 2, let r = pair[0].int, let c = pair[1].int else {
        throw QoQError("recipe field \(path): each group shape is [rows, cols]")
      }
      return [r, c]
    }
  }

  /// The resolved recipe as YAML.
  public func yaml() throws -> String {
    func toAny(_ v: JSONValue) -> Any {
      switch v {
      case .null: return NSNull()
      case .bool(let b): return b
      case .int(let i): return i
      case .double(let d): return d
      case .string(let s): return s
      case .array(let a): return a.map(toAny)
      case .object(let o): return Dictionary(uniqueKeysWithValues: o.pairs.map { ($0.0, toAny($0.1)) })
      }
    }
    return try Yams.dump(object: toAny(tree), sortKeys: true)
  }
}
