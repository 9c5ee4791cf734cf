// Chat templates: the subset of Jinja that Hugging Face chat templates use (tokenizer_config.json's or GGUF's
// `chat_template`), rendered without Python: text, {{ expressions }}, {% if / elif / else / endif %},
// {% for x in xs %} with loop.index0 / index / first / last / length, {% set %}, whitespace control ({%- -%},
// {{- -}}), string/number/bool/none literals, lists, subscripts and slices, attributes, + - * / % ~, comparisons,
// and / or / not, `in`, `is defined` / `is none`, filters (trim, length, upper, lower, tojson), string methods
// (strip, lstrip, rstrip, upper, lower, startswith, endswith) and raise_exception(...). Anything else is a clear
// error naming the construct, never a wrong rendering.
import Foundation
import QoQIO

public indirect enum TemplateValue: Equatable, Sendable {
  case none, bool(Bool), int(Int), string(String), list([TemplateValue]), dict([String: TemplateValue])
  case undefined

  var truthy: Bool {
    switch self {
    case .none, .undefined: return false
    case .bool(let b): return b
    case .int(let i): return i != 0
    case .string(let s): return !s.isEmpty
    case .list(let l): return !l.isEmpty
    case .dict(let d): return !d.isEmpty
    }
  }

  func render() -> String {
    switch self {
    case .none: return "None"
    case .undefined: return ""
    case .bool(let b): return b ? "True" : "False"
    case .int(let i): return String(i)
    case .string(let s): return s
    case .list(let l): return "[" + l.map { $0.repr() }.joined(separator: ", ") + "]"
    case .dict(let d): return "{" + d.keys.sorted().map { "'\($0)': " + d[$0]!.repr() }.joined(separator: ", ") + "}"
    }
  }
  func repr() -> String { if case .string(let s) = self { return "'" + s + "'" }; return render() }

  /// From parsed JSON (request messages, tools).
  public init(json v: JSONValue) {
    if let s = v.string { self = .string(s) }
    else if let b = v.bool { self = .bool(b) }
    else if let i = v.int { self = .int(i) }
    else if let a = v.array { self = .list(a.map(TemplateValue.init(json:))) }
    else if let o = v.object { var d: [String: TemplateValue] = [:]; for (k, x) in o.pairs { d[k] = TemplateValue(json: x) }; self = .dict(d) }
    else { self = .none }
  }
}

public struct ChatTemplate: Sendable {
  let nodes: [Node]
  public let source: String

  public init(_ source: String) throws {
    self.source = source
    var p = TemplateParser(tokens: try TemplateLexer.lex(source))
    nodes = try p.parseBlock(until: [])
  }

  /// Renders with the given variables (messages, add_generation_prompt, bos_token, eos_token, …).
  public func render(_ vars: [String: TemplateValue]) throws -> String {
    var ctx = TemplateContext(scopes: [vars])
    var out = ""
    try ctx.run(nodes, into: &out)
    return out
  }

  /// The usual call: messages as (role, content) pairs.
  public func render(messages: [(role: String, content: String)], addGenerationPrompt: Bool, bosToken: String, eosToken: String) throws -> String {
    try render(["messages": .list(messages.map { .dict(["role": .string($0.role), "content": .string($0.content)]) }),
                "add_generation_prompt": .bool(addGenerationPrompt), "bos_token": .string(bosToken), "eos_token": .string(eosToken)])
  }
}

// MARK: - Lexer

enum TemplateToken: Equatable {
  case text(String)
  case exprOpen, exprClose, stmtOpen, stmtClose
  case name(String), string(String), int(Int), op(String)
}

enum TemplateLexer {
  static func lex(_ s: String) throws -> [TemplateToken] {
    var out: [TemplateToken] = []
    let c = Array(s)
    var i = 0
    var text = ""
    var textStart = 0   // index in c where `text` began
    var trimNextText = false
    func flushText(trimRight: Bool) {
      var t = text
      if trimNextText { t = String(t.drop { $0.isWhitespace }) }
      if trimRight { while let l = t.last, l.isWhitespace { t.removeLast() } }
      if !t.isEmpty { out.append(.text(t)) }
      text = ""; trimNextText = false
    }
    while i < c.count {
      if c[i] == "{" && i + 1 < c.count && (c[i + 1] == "{" || c[i + 1] == "%" || c[i + 1] == "#") {
        let kind = c[i + 1]
        i += 2
        let trimLeft = i < c.count && c[i] == "-"
        if trimLeft { i += 1 }
        // lstrip_blocks (transformers renders chat templates with it): spaces and tabs between the start of a line
        // and a block tag go.
        if kind != "{" && !trimLeft {
          var t = text
          while let l = t.last, l == " " || l == "\t" { t.removeLast() }
          // Only at the start of a line: after a newline in this text, or when the text itself starts a line.
          let textStartsLine = textStart == 0 || c[textStart - 1] == "\n"
          if t.last == "\n" || (t.isEmpty && textStartsLine) { text = t }
        }
        flushText(trimRight: trimLeft)
        if kind == "#" {
          while i + 1 < c.count && !(c[i] == "#" && c[i + 1] == "}") { i += 1 }
          guard i + 1 < c.count else { throw QoQError("chat template: unterminated comment") }
          trimNextText = i > 0 && c[i - 1] == "-"
          i += 2
          if i < c.count && c[i] == "\n" { i += 1 }
          continue
        }
        out.append(kind == "{" ? .exprOpen : .stmtOpen)
        let close: Character = kind == "{" ? "}" : "%"
        while true {
          guard i < c.count else { throw QoQError("chat template: unterminated \(kind == "{" ? "{{" : "{%")") }
          let ch = c[i]
          if ch.isWhitespace { i += 1; continue }
          if ch == "-" && i + 2 < c.count && c[i + 1] == close && c[i + 2] == "}" {
            trimNextText = true; i += 3; out.append(kind == "{" ? .exprClose : .stmtClose); break
          }
          if ch == close && i + 1 < c.count && c[i + 1] == "}" {
            i += 2
            out.append(kind == "{" ? .exprClose : .stmtClose)
            // trim_blocks: the first newline after a block tag goes.
            if kind == "%" && i < c.count && c[i] == "\n" { i += 1 }
            break
          }
          if ch == "'" || ch == "\"" {
            var v = ""; i += 1
            while i < c.count && c[i] != ch {
              if c[i] == "\\" && i + 1 < c.count {
                i += 1
                switch c[i] { case "n": v.append("\n"); case "t": v.append("\t"); case "r": v.append("\r"); default: v.append(c[i]) }
              } else { v.append(c[i]) }
              i += 1
            }
            guard i < c.count else { throw QoQError("chat template: unterminated string") }
            i += 1
            out.append(.string(v)); continue
          }
          if ch.isASCII && ch.isNumber {
            // ASCII digits only (a non-ASCII numeral such as "½" would never advance), and no overflow.
            var v = 0
            while i < c.count, c[i].isASCII, let d = c[i].wholeNumberValue {
              let (m, o1) = v.multipliedReportingOverflow(by: 10), (a, o2) = m.addingReportingOverflow(d)
              if o1 || o2 { throw QoQError("chat template: integer literal too large") }
              v = a; i += 1
            }
            out.append(.int(v)); continue
          }
          if ch.isLetter || ch == "_" {
            var v = ""; while i < c.count && (c[i].isLetter || c[i].isNumber || c[i] == "_") { v.append(c[i]); i += 1 }
            out.append(.name(v)); continue
          }
          let two = i + 1 < c.count ? String(c[i...(i + 1)]) : ""
          if ["==", "!=", "<=", ">=", "//"].contains(two) { out.append(.op(two)); i += 2; continue }
          if "+-*/%~<>()[].,|:=".contains(ch) { out.append(.op(String(ch))); i += 1; continue }
          throw QoQError("chat template: unexpected character \(ch)")
        }
      } else {
        if text.isEmpty { textStart = i }
        text.append(c[i]); i += 1
      }
    }
    flushText(trimRight: false)
    return out
  }
}

// MARK: - Syntax

indirect enum Expr: Sendable {
  case literal(TemplateValue), variable(String), list([Expr])
  case attr(Expr, String), index(Expr, Expr), slice(Expr, Expr?, Expr?)
  case call(Expr, [Expr]), filter(Expr, String, [Expr]), test(Expr, String, Bool)
  case unary(String, Expr), binary(String, Expr, Expr)
}

indirect enum Node: Sendable {
  case text(String), output(Expr)
  case ifNode([(Expr, [Node])], [Node])
  case forNode(String, Expr, [Node])
  case set(String, Expr)
}

struct TemplateParser {
  let tokens: [TemplateToken]
  var pos = 0
  /// Nesting of blocks and sub-expressions; bounded so a hostile template cannot overflow the stack.
  var depth = 0
  static let maxDepth = 200
  mutating func enter() throws {
    depth += 1
    if depth > Self.maxDepth { throw QoQError("chat template: nested more than \(Self.maxDepth) levels deep") }
  }

  init(tokens: [TemplateToken]) { self.tokens = tokens }

  var peek: TemplateToken? { pos < tokens.count ? tokens[pos] : nil }
  mutating func next() throws -> TemplateToken {
    guard pos < tokens.count else { throw QoQError("chat template: unexpected end") }; defer { pos += 1 }; return tokens[pos]
  }
  mutating func expect(_ t: TemplateToken) throws {
    let n = try next(); guard n == t else { throw QoQError("chat template: expected \(t), found \(n)") }
  }
  mutating func keyword(_ k: String) -> Bool { if peek == .name(k) { pos += 1; return true }; return false }

  /// Parses nodes until a statement whose keyword is in `until` (left unconsumed after {%).
  mutating func parseBlock(until: Set<String>) throws -> [Node] {
    try enter(); defer { depth -= 1 }
    var nodes: [Node] = []
    while let t = peek {
      switch t {
      case .text(let s): pos += 1; nodes.append(.text(s))
      case .exprOpen: pos += 1; let e = try parseExpr(); try expect(.exprClose); nodes.append(.output(e))
      case .stmtOpen:
        guard pos + 1 < tokens.count, case .name(let kw) = tokens[pos + 1] else { throw QoQError("chat template: empty statement") }
        if until.contains(kw) { return nodes }
        pos += 2
        switch kw {
        case "if":
          var branches: [(Expr, [Node])] = []
          var cond = try parseExpr(); try expect(.stmtClose)
          var elseNodes: [Node] = []
          while true {
            let body = try parseBlock(until: ["elif", "else", "endif"])
            branches.append((cond, body))
            try expect(.stmtOpen)
            guard case .name(let k) = try next() else { throw QoQError("chat template: bad if") }
            if k == "elif" { cond = try parseExpr(); try expect(.stmtClose); continue }
            if k == "else" { try expect(.stmtClose); elseNodes = try parseBlock(until: ["endif"]); try expect(.stmtOpen); _ = try next() }
            try expect(.stmtClose)
            break
          }
          nodes.append(.ifNode(branches, elseNodes))
        case "for":
          guard case .name(let v) = try next() else { throw QoQError("chat template: for needs a name") }
          guard keyword("in") else { throw QoQError("chat template: for … in expected") }
          let seq = try parseExpr(); try expect(.stmtClose)
          let body = try parseBlock(until: ["endfor"])
          try expect(.stmtOpen); _ = try next(); try expect(.stmtClose)
          nodes.append(.forNode(v, seq, body))
        case "set":
          guard case .name(let v) = try next() else { throw QoQError("chat template: set needs a name") }
          try expect(.op("=")); let e = try parseExpr(); try expect(.stmtClose)
          nodes.append(.set(v, e))
        default:
          throw QoQError("chat template: {% \(kw) %} is not supported")
        }
      default: throw QoQError("chat template: unexpected \(t)")
      }
    }
    if !until.isEmpty { throw QoQError("chat template: missing {% \(until.sorted().joined(separator: " / ")) %}") }
    return nodes
  }

  mutating func parseExpr() throws -> Expr { try enter(); defer { depth -= 1 }; return try parseOr() }
  mutating func parseOr() throws -> Expr { var l = try parseAnd(); while keyword("or") { l = .binary("or", l, try parseAnd()) }; return l }
  mutating func parseAnd() throws -> Expr { var l = try parseNot(); while keyword("and") { l = .binary("and", l, try parseNot()) }; return l }
  mutating func parseNot() throws -> Expr {
    try enter(); defer { depth -= 1 }
    return keyword("not") ? .unary("not", try parseNot()) : try parseCompare()
  }
  mutating func parseCompare() throws -> Expr {
    var l = try parseAdd()
    while true {
      if case .op(let o) = peek, ["==", "!=", "<", ">", "<=", ">="].contains(o) { pos += 1; l = .binary(o, l, try parseAdd()); continue }
      if keyword("in") { l = .binary("in", l, try parseAdd()); continue }
      if peek == .name("not"), pos + 1 < tokens.count, tokens[pos + 1] == .name("in") {
        pos += 2; l = .unary("not", .binary("in", l, try parseAdd())); continue
      }
      if keyword("is") {
        let neg = keyword("not")
        guard case .name(let t) = try next() else { throw QoQError("chat template: is … expected a test") }
        l = .test(l, t, neg); continue
      }
      return l
    }
  }
  mutating func parseAdd() throws -> Expr {
    var l = try parseMul()
    while case .op(let o) = peek, ["+", "-", "~"].contains(o) { pos += 1; l = .binary(o, l, try parseMul()) }
    return l
  }
  mutating func parseMul() throws -> Expr {
    var l = try parseUnary()
    while case .op(let o) = peek, ["*", "/", "//", "%"].contains(o) { pos += 1; l = .binary(o, l, try parseUnary()) }
    return l
  }
  mutating func parseUnary() throws -> Expr {
    try enter(); defer { depth -= 1 }
    if peek == .op("-") { pos += 1; return .unary("-", try parseUnary()) }
    return try parsePostfix()
  }
  mutating func parsePostfix() throws -> Expr {
    var e = try parsePrimary()
    while let t = peek {
      if t == .op(".") {
        pos += 1; guard case .name(let n) = try next() else { throw QoQError("chat template: attribute name expected") }; e = .attr(e, n)
      }
      else if t == .op("[") {
        pos += 1
        var a: Expr? = nil, b: Expr? = nil
        if peek != .op(":") { a = try parseExpr() }
        if peek == .op(":") { pos += 1; if peek != .op("]") { b = try parseExpr() }; try expect(.op("]")); e = .slice(e, a, b) }
        else { try expect(.op("]")); e = .index(e, a!) }
      }
      else if t == .op("(") { pos += 1; e = .call(e, try parseArgs()) }
      else if t == .op("|") {
        pos += 1
        guard case .name(let f) = try next() else { throw QoQError("chat template: filter name expected") }
        var args: [Expr] = []
        if peek == .op("(") { pos += 1; args = try parseArgs() }
        e = .filter(e, f, args)
      } else { break }
    }
    return e
  }
  mutating func parseArgs() throws -> [Expr] {
    var a: [Expr] = []
    if peek == .op(")") { pos += 1; return a }
    while true {
      a.append(try parseExpr())
      if peek == .op(",") { pos += 1; continue }
      try expect(.op(")")); return a
    }
  }
  mutating func parsePrimary() throws -> Expr {
    switch try next() {
    case .string(let s): return .literal(.string(s))
    case .int(let i): return .literal(.int(i))
    case .name(let n):
      switch n {
      case "true", "True": return .literal(.bool(true))
      case "false", "False": return .literal(.bool(false))
      case "none", "None": return .literal(.none)
      default: return .variable(n)
      }
    case .op("("): let e = try parseExpr(); try expect(.op(")")); return e
    case .op("["):
      var items: [Expr] = []
      if peek == .op("]") { pos += 1; return .list(items) }
      while true { items.append(try parseExpr()); if peek == .op(",") { pos += 1; continue }; try expect(.op("]")); return .list(items) }
    case let t: throw QoQError("chat template: unexpected \(t) in an expression")
    }
  }
}

// MARK: - Evaluation

/// Integer results that overflow are an error, not a crash.
func checked(_ r: (partialValue: Int, overflow: Bool)) throws -> Int {
  if r.overflow { throw QoQError("chat template: integer overflow") }
  return r.partialValue
}

struct TemplateContext {
  var scopes: [[String: TemplateValue]]
  /// Caps for templates from untrusted model files (anchors.md §3.3): rendered bytes and loop iterations.
  static let maxOutputBytes = 8 << 20
  static let maxIterations = 1_000_000
  var iterations = 0

  /// A string built by concatenation, refused beyond the output cap (doubling in nested loops grows fast).
  func capped(_ s: String) throws -> String {
    if s.utf8.count > Self.maxOutputBytes { throw QoQError("chat template: a string exceeds \(Self.maxOutputBytes) bytes") }
    return s
  }

  func lookup(_ n: String) -> TemplateValue {
    for s in scopes.reversed() { if let v = s[n] { return v } }
    return .undefined
  }

  mutating func run(_ nodes: [Node], into out: inout String) throws {
    for n in nodes {
      if out.utf8.count > Self.maxOutputBytes { throw QoQError("chat template: output exceeds \(Self.maxOutputBytes) bytes") }
      switch n {
      case .text(let s): out += s
      case .output(let e): out += try eval(e).render()
      case .set(let name, let e): scopes[scopes.count - 1][name] = try eval(e)
      case .ifNode(let branches, let elseNodes):
        var done = false
        for (c, body) in branches where try eval(c).truthy { try run(body, into: &out); done = true; break }
        if !done { try run(elseNodes, into: &out) }
      case .forNode(let v, let seqE, let body):
        let seq: [TemplateValue]
        switch try eval(seqE) {
        case .list(let l): seq = l
        case .string(let s): seq = s.map { .string(String($0)) }
        case .undefined, .none: seq = []
        case let x: throw QoQError("chat template: cannot loop over \(x.repr())")
        }
        for (i, item) in seq.enumerated() {
          iterations += 1
          if iterations > Self.maxIterations { throw QoQError("chat template: more than \(Self.maxIterations) loop iterations") }
          scopes.append([v: item, "loop": .dict(["index0": .int(i), "index": .int(i + 1), "first": .bool(i == 0),
                                                 "last": .bool(i == seq.count - 1), "length": .int(seq.count)])])
          // `set` inside a loop body stays in the loop's scope (Jinja's scoping rule).
          try run(body, into: &out)
          scopes.removeLast()
        }
      }
    }
  }

  func eval(_ e: Expr) throws -> TemplateValue {
    switch e {
    case .literal(let v): return v
    case .variable(let n): return lookup(n)
    case .list(let items): return .list(try items.map(eval))
    case .attr(let b, let n):
      let base = try eval(b)
      if case .dict(let d) = base { return d[n] ?? .undefined }
      return .undefined
    case .index(let b, let i):
      let base = try eval(b), idx = try eval(i)
      switch (base, idx) {
      case (.dict(let d), .string(let k)): return d[k] ?? .undefined
      case (.list(let l), .int(let k)): let j = k < 0 ? l.count + k : k; return j >= 0 && j < l.count ? l[j] : .undefined
      case (.string(let s), .int(let k)):
        let a = Array(s); let j = k < 0 ? a.count + k : k; return j >= 0 && j < a.count ? .string(String(a[j])) : .undefined
      default: return .undefined
      }
    case .slice(let b, let lo, let hi):
      func bounds(_ n: Int) throws -> (Int, Int) {
        func norm(_ x: Expr?, _ d: Int) throws -> Int {
          guard let x else { return d }
          guard case .int(var v) = try eval(x) else { throw QoQError("chat template: slice bounds must be integers") }
          if v < 0 { v += n }
          return min(max(v, 0), n)
        }
        let a = try norm(lo, 0), z = try norm(hi, n)
        return (a, max(a, z))
      }
      switch try eval(b) {
      case .list(let l): let (a, z) = try bounds(l.count); return .list(Array(l[a..<z]))
      case .string(let s): let arr = Array(s); let (a, z) = try bounds(arr.count); return .string(String(arr[a..<z]))
      default: return .undefined
      }
    case .call(let f, let args):
      let vals = try args.map(eval)
      if case .variable("raise_exception") = f { throw QoQError("chat template: " + (vals.first?.render() ?? "raise_exception")) }
      if case .attr(let b, let m) = f, case .string(let s) = try eval(b) {
        let arg = vals.first.flatMap { if case .string(let x) = $0 { return x }; return nil }
        switch m {
        case "strip": return .string(s.trimmingCharacters(in: arg.map { CharacterSet(charactersIn: $0) } ?? .whitespacesAndNewlines))
        case "lstrip": return .string(String(s.drop { ch in arg.map { $0.contains(ch) } ?? ch.isWhitespace }))
        case "rstrip": return .string(String(String(s.reversed().drop { ch in arg.map { $0.contains(ch) } ?? ch.isWhitespace }).reversed()))
        case "upper": return .string(s.uppercased())
        case "lower": return .string(s.lowercased())
        case "startswith": return .bool(arg.map(s.hasPrefix) ?? false)
        case "endswith": return .bool(arg.map(s.hasSuffix) ?? false)
        default: break
        }
      }
      throw QoQError("chat template: unsupported call")
    case .filter(let b, let f, _):
      let v = try eval(b)
      switch (f, v) {
      case ("trim", .string(let s)): return .string(s.trimmingCharacters(in: .whitespacesAndNewlines))
      case ("upper", .string(let s)): return .string(s.uppercased())
      case ("lower", .string(let s)): return .string(s.lowercased())
      case ("length", .string(let s)): return .int(s.count)
      case ("length", .list(let l)): return .int(l.count)
      case ("length", .dict(let d)): return .int(d.count)
      case ("tojson", _): return .string(v.repr().replacingOccurrences(of: "'", with: "\""))
      default: throw QoQError("chat template: filter \(f) is not supported for \(v.repr())")
      }
    case .test(let b, let t, let neg):
      let v = try eval(b)
      let r: Bool
      switch t {
      case "defined": r = v != .undefined
      case "undefined": r = v == .undefined
      case "none": r = v == .none
      case "string": if case .string = v { r = true } else { r = false }
      default: throw QoQError("chat template: test is \(t) is not supported")
      }
      return .bool(neg ? !r : r)
    case .unary(let o, let x):
      let v = try eval(x)
      if o == "not" { return .bool(!v.truthy) }
      if case .int(let i) = v { return .int(try checked(0.subtractingReportingOverflow(i))) }
      throw QoQError("chat template: bad operand of -")
    case .binary(let o, let l, let r):
      if o == "and" { let a = try eval(l); return a.truthy ? try eval(r) : a }
      if o == "or" { let a = try eval(l); return a.truthy ? a : try eval(r) }
      let a = try eval(l), b = try eval(r)
      switch o {
      case "==": return .bool(a == b)
      case "!=": return .bool(a != b)
      case "~": return .string(try capped(a.render() + b.render()))
      case "in":
        switch b {
        case .string(let s): if case .string(let x) = a { return .bool(s.contains(x)) }; return .bool(false)
        case .list(let l): return .bool(l.contains(a))
        case .dict(let d): if case .string(let x) = a { return .bool(d[x] != nil) }; return .bool(false)
        default: return .bool(false)
        }
      default: break
      }
      switch (a, b) {
      case (.string(let x), .string(let y)) where o == "+": return .string(try capped(x + y))
      case (.list(let x), .list(let y)) where o == "+":
        guard x.count + y.count <= Self.maxIterations else { throw QoQError("chat template: list longer than \(Self.maxIterations) items") }
        return .list(x + y)
      case (.int(let x), .int(let y)):
        switch o {
        case "+": return .int(try checked(x.addingReportingOverflow(y)))
        case "-": return .int(try checked(x.subtractingReportingOverflow(y)))
        case "*": return .int(try checked(x.multipliedReportingOverflow(by: y)))
        case "//", "/":
          guard y != 0 else { throw QoQError("chat template: division by zero") }; return .int(try checked(x.dividedReportingOverflow(by: y)))
        case "%":
          guard y != 0 else { throw QoQError("chat template: modulo by zero") }
          let r = try checked(x.remainderReportingOverflow(dividingBy: y))
          return .int(r != 0 && (r < 0) != (y < 0) ? r + y : r)   // Python's sign rule
        case "<": return .bool(x < y)
        case ">": return .bool(x > y)
        case "<=": return .bool(x <= y)
        case ">=": return .bool(x >= y)
        default: break
        }
      default: break
      }
      throw QoQError("chat template: cannot apply \(o) to \(a.repr()) and \(b.repr())")
    }
  }
}

extension ChatTemplate {
  /// ChatML, for models that ship no template.
  public static let chatML = try! ChatTemplate(
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endfor %}"
      + "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")

  /// The model's own template: `chat_template` of tokenizer_config.json (a string, or a list of {name, template}
  /// where "default" wins), chat_template.jinja beside it, or a GGUF's tokenizer.chat_template. nil when it has none.
  public static func forModel(path: String) throws -> ChatTemplate? {
    if path.hasSuffix(".gguf") {
      return try GGUFFile(path: path).string("tokenizer.chat_template").map { try ChatTemplate($0) }
    }
    let fm = FileManager.default
    if fm.fileExists(atPath: path + "/chat_template.jinja"), let s = try? String(contentsOfFile: path + "/chat_template.jinja", encoding: .utf8) {
      return try ChatTemplate(s)
    }
    guard let cfg = try? JSON.parseFile(path + "/tokenizer_config.json"), let t = cfg["chat_template"] else { return nil }
    if let s = t.string { return try ChatTemplate(s) }
    if let list = t.array {
      let named = list.compactMap { e -> (String, String)? in
        guard let n = e["name"]?.string, let s = e["template"]?.string else { return nil }
        return (n, s)
      }
      if let d = named.first(where: { $0.0 == "default" }) ?? named.first { return try ChatTemplate(d.1) }
    }
    return nil
  }
}
