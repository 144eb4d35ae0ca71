import Foundation
import NIOCore

/// The browser client (`switchboard.js`) and the demo chat page (`index.html`) that a
/// gateway serves at `/switchboard.js` and `/`.
///
/// The files are read once at start-up and served from memory. They ship as a SwiftPM
/// resource of this target (`Resources/web`); ``bundledDirectory`` finds them next to
/// the executable, where SwiftPM and the Dockerfile put them.
public struct WebAssets: Sendable {
    /// A file's bytes and its `Content-Type`.
    struct File: Sendable {
        var contentType: String
        var body: ByteBuffer
    }

    /// Files by the URL path they are served at.
    let files: [String: File]

    /// Why the assets could not be loaded.
    public struct LoadError: Error, CustomStringConvertible {
        public var description: String
        public init(description: String) { self.description = description }
    }

    /// Reads `index.html` and `switchboard.js` from `directory`.
    public static func load(from directory: String) throws(LoadError) -> WebAssets {
        let served: [(path: String, name: String, type: String)] = [
            ("/", "index.html", "text/html; charset=utf-8"),
            ("/switchboard.js", "switchboard.js", "text/javascript; charset=utf-8"),
        ]
        var files: [String: File] = [:]
        for entry in served {
            let path = (directory as NSString).appendingPathComponent(entry.name)
            guard let data = FileManager.default.contents(atPath: path) else {
                throw LoadError(description: "cannot read \(path)")
            }
            files[entry.path] = File(contentType: entry.type, body: ByteBuffer(bytes: data))
        }
        return WebAssets(files: files)
    }

    /// The `web` folder of this target's resource bundle beside the running executable,
    /// when it is there (`.build/release/`, or `/app` in the Docker image).
    public static var bundledDirectory: String? {
        guard let executable = Bundle.main.executableURL else { return nil }
        let directory = executable.deletingLastPathComponent()
            .appendingPathComponent("switchboard_SwitchboardServer.resources")
            .appendingPathComponent("web").path
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: directory, isDirectory: &isDirectory), isDirectory.boolValue else {
            return nil
        }
        return directory
    }
}
