// Output folders that never destroy what qoq did not write (anchors.md §3: "never delete or overwrite what the tool
// did not write"). Every command that writes a folder goes through `OutputFolder.write`:
//   - a new path, or an existing empty folder, is simply written;
//   - an existing non-empty folder is refused unless `force`, and even then only when it carries the marker file
//     qoq puts in every folder it writes (`.qoq-output`); a file, a symbolic link or an unmarked folder is never
//     replaced;
//   - the input model (or a folder holding it) is never a valid output;
//   - the new folder is built beside the target under a hidden temporary name, then renamed into place; the old
//     folder is renamed aside first and removed only after the new one is in place.
import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

public enum OutputFolder {
  /// The marker file written into every output folder; its presence is what `--force` requires before replacing.
  public static let marker = ".qoq-output"

  /// What is at a path, without following a final symbolic link.
  enum Existing { case none, emptyFolder, ourFolder, foreignFolder, file, symlink }

  static func existing(_ path: String) -> Existing {
    var st = stat()
    guard lstat(path, &st) == 0 else { return .none }
    switch st.st_mode & S_IFMT {
    case S_IFLNK: return .symlink
    case S_IFDIR:
      let items = (try? FileManager.default.contentsOfDirectory(atPath: path)) ?? ["?"]
      if items.isEmpty { return .emptyFolder }
      return items.contains(marker) ? .ourFolder : .foreignFolder
    default: return .file
    }
  }

  /// The absolute path with symbolic links resolved as far as the path exists.
  static func resolved(_ path: String) -> String {
    let abs = URL(fileURLWithPath: path).standardizedFileURL
    if let r = realpath(abs.path, nil) { defer { free(r) }; return String(cString: r) }
    let parent = abs.deletingLastPathComponent().path
    if parent == abs.path { return abs.path }
    return resolved(parent) + "/" + abs.lastPathComponent
  }

  /// Refuses an output that would destroy something qoq did not write. Call it before long work (so a run does not
  /// fail at its end) and it runs again inside `write`.
  public static func check(_ output: String, force: Bool, inputs: [String] = []) throws {
    guard !output.isEmpty else { throw QoQError("the output folder path is empty") }
    let out = resolved(output)
    if out == "/" { throw QoQError("refusing to write the output to /") }
    for input in inputs where !input.isEmpty && FileManager.default.fileExists(atPath: input) {
      let inp = resolved(input)
      if inp == out || inp.hasPrefix(out + "/") {
        throw QoQError("\(output) is the input \(input)\(inp == out ? "" : "'s folder"); choose another output folder")
      }
    }
    // The folder must be creatable: the nearest existing ancestor is a writable folder.
    var ancestor = URL(fileURLWithPath: output).standardizedFileURL.deletingLastPathComponent()
    while existing(ancestor.path) == .none && ancestor.path != "/" { ancestor = ancestor.deletingLastPathComponent() }
    var isDir: ObjCBool = false
    if !FileManager.default.fileExists(atPath: ancestor.path, isDirectory: &isDir) || !isDir.boolValue {
      throw QoQError("cannot create folder \(output): \(ancestor.path) is not a folder")
    }
    if access(ancestor.path, W_OK) != 0 { throw QoQError("cannot create folder \(output): \(ancestor.path) is not writable") }
    switch existing(output) {
    case .none, .emptyFolder: return
    case .file: throw QoQError("\(output) exists and is a file; qoq writes folders and does not replace files (remove it or choose another path)")
    case .symlink: throw QoQError("\(output) is a symbolic link; qoq does not replace links (remove it or choose another path)")
    case .foreignFolder:
      throw QoQError(force
        ? "\(output) is a folder qoq did not write (it has no \(marker) marker); not replacing it, even with --force"
        : "\(output) already exists and is not empty (choose another folder; --force replaces only a folder qoq wrote)")
    case .ourFolder:
      if !force { throw QoQError("\(output) already exists (pass --force to replace it; it was written by qoq)") }
    }
  }

  /// Builds the folder: `body` fills a temporary sibling folder, the marker is added, and the result is renamed to
  /// `output`. On failure the temporary folder is removed and `output` is untouched.
  public static func write(_ output: String, force: Bool, inputs: [String] = [], command: String = "qoq",
                           _ body: (String) throws -> Void) throws {
    try check(output, force: force, inputs: inputs)
    let fm = FileManager.default
    let url = URL(fileURLWithPath: output).standardizedFileURL
    let parent = url.deletingLastPathComponent().path, name = url.lastPathComponent
    try createFolder(parent)
    let tag = "\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
    let tmp = parent + "/." + name + ".tmp-" + tag
    guard mkdir(tmp, 0o755) == 0 else { throw QoQError("cannot create a folder in \(parent): \(String(cString: strerror(errno)))") }
    do {
      try body(tmp)
      let stamp = JSONObject([("tool", .string("qoq")), ("command", .string(command)),
                              ("written", .string(ISO8601DateFormatter().string(from: Date())))])
      try atomicWrite(tmp + "/" + marker, data: Data(JSON.serialize(.object(stamp), pretty: true).utf8))
      // Checked again: something may have appeared at the target while the body ran.
      try check(output, force: force, inputs: inputs)
      switch existing(output) {
      case .none: try rename(tmp, output)
      case .emptyFolder:
        guard rmdir(output) == 0 else { throw QoQError("\(output): cannot replace the empty folder (\(String(cString: strerror(errno))))") }
        try rename(tmp, output)
      case .ourFolder:
        let old = parent + "/." + name + ".old-" + tag
        try rename(output, old)
        do { try rename(tmp, output) } catch {
          _ = Foundation.rename(old, output)
          throw error
        }
        // Only a folder that carries our marker is ever removed.
        if existing(old) == .ourFolder { try? fm.removeItem(atPath: old) }
      default: throw QoQError("\(output): changed while it was being written; not replacing it")
      }
    } catch {
      try? fm.removeItem(atPath: tmp)
      throw error
    }
  }

  /// A working folder a command fills over several runs (`qoq table` resumes in it): created with the marker when
  /// new or empty, reused when it carries the marker, refused when it holds anything qoq did not write.
  public static func claim(_ output: String, inputs: [String] = [], command: String) throws {
    switch existing(output) {
    case .ourFolder: try check(output, force: true, inputs: inputs)
    case .none, .emptyFolder:
      try check(output, force: false, inputs: inputs)
      try createFolder(output)
      let stamp = JSONObject([("tool", .string("qoq")), ("command", .string(command))])
      try atomicWrite(output + "/" + marker, data: Data(JSON.serialize(.object(stamp), pretty: true).utf8))
    default: try check(output, force: true, inputs: inputs)  // throws: a file, a link or a folder qoq did not write
    }
  }

  /// `mkdir -p` with a one-line error naming the folder.
  public static func createFolder(_ path: String) throws {
    do { try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true) } catch {
      throw QoQError("cannot create folder \(path): \(describeFileError(error))")
    }
  }

  static func rename(_ from: String, _ to: String) throws {
    if Foundation.rename(from, to) != 0 { throw QoQError("cannot rename \(from) to \(to): \(String(cString: strerror(errno)))") }
  }
}

/// A one-line description of a file-system error (Foundation's errors print as a dictionary dump otherwise).
public func describeFileError(_ error: Error) -> String {
  if let e = error as? QoQError { return e.message }
  let ns = error as NSError
  if let u = ns.userInfo[NSUnderlyingErrorKey] as? NSError, u.domain == NSPOSIXErrorDomain {
    return String(cString: strerror(Int32(u.code)))
  }
  if ns.domain == NSPOSIXErrorDomain { return String(cString: strerror(Int32(ns.code))) }
  switch CocoaError.Code(rawValue: ns.code) {
  case .fileWriteNoPermission, .fileReadNoPermission: return "permission denied"
  case .fileWriteOutOfSpace: return "no space left on the device"
  case .fileNoSuchFile, .fileReadNoSuchFile: return "no such file or folder"
  case .fileWriteFileExists: return "already exists"
  case .fileWriteVolumeReadOnly: return "read-only file system"
  default: return ns.localizedDescription.split(separator: "\n").first.map(String.init) ?? "\(ns.domain) \(ns.code)"
  }
}
