import ArgumentParser
import Foundation
import NIOCore
import SwitchboardProtocol

/// `switchboard-bench parse`: the cost on the event loop of decoding client frames,
/// including the worst case the security review found (64 KiB of distinct short member
/// names, which a quadratic duplicate-key check turned into tens of milliseconds).
struct ParseBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "parse",
        abstract: "Decode typical and worst-case client frames in this process; report time per frame."
    )

    @Option(help: "Frames decoded per kind (at most 1000000).")
    var iterations = 2_000

    func validate() throws {
        guard (1...1_000_000).contains(iterations) else { throw ValidationError("--iterations must be 1…1000000") }
    }

    func run() async throws {
        let frames: [(String, ByteBuffer)] = [
            ("direct, 60 B", ByteBuffer(string: #"{"type":"direct","to":"bob","data":{"text":"hi"},"id":"c1"}"#)),
            (
                "direct, 64 KiB string data",
                ByteBuffer(string: #"{"type":"direct","to":"bob","data":""# + String(repeating: "x", count: 65_400) + #"","id":"c1"}"#)
            ),
            ("64 KiB, \(Self.manyKeysCount) distinct member names", ByteBuffer(bytes: Self.manyKeys)),
        ]
        print("kind | bytes | µs per frame (median of 5 rounds of \(iterations))")
        for (name, frame) in frames {
            var rounds: [Double] = []
            for _ in 0..<5 {
                let started = ContinuousClock.now
                for _ in 0..<iterations { _ = ClientFrame.decode(frame) }
                rounds.append((ContinuousClock.now - started).seconds * 1e6 / Double(iterations))
            }
            print("\(name) | \(frame.readableBytes) | \(String(format: "%.2f", rounds.sorted()[2]))")
        }
    }

    /// `{"type":"ping","aaa":0,"aab":0,…}` up to 64 KiB: the duplicate-key check's worst case.
    static let manyKeys: [UInt8] = {
        var text = #"{"type":"ping""#
        let letters = Array("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
        outer: for first in letters {
            for second in letters {
                for third in letters {
                    let member = #","\#(first)\#(second)\#(third)":0"#
                    if text.utf8.count + member.utf8.count >= 65_535 { break outer }
                    text += member
                }
            }
        }
        return Array((text + "}").utf8)
    }()

    static var manyKeysCount: Int { manyKeys.count { $0 == UInt8(ascii: ":") } - 1 }
}
