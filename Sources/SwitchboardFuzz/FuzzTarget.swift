import NIOCore
import SwitchboardProtocol

// Fuzzing the client-frame decoder and the routing-key encoder.
//
// Under libFuzzer (built with `-sanitize=fuzzer -D FUZZING`, see scripts/fuzz.sh) the
// entry point below is called with generated inputs. In a normal build this target is
// a plain program that replays saved inputs (Tests/Fuzz/regressions), so every crash
// the fuzzer ever found stays a regression test.

/// Runs one input through everything that parses client-controlled bytes.
func exercise(_ bytes: [UInt8]) {
    let message = ByteBuffer(bytes: bytes)
    switch ClientFrame.decode(message) {
    case .success(let frame):
        // Whatever decodes must re-encode to valid frames for recipients.
        switch frame {
        case .direct(let to, let data, _):
            let encoded = ServerFrame.direct(from: to, to: to, data: data)
            precondition((try? JSONScanner.topLevelMembers(of: Array(encoded.readableBytesView))) != nil, "direct frame is not JSON")
        case .publish(let room, let data, _):
            let encoded = ServerFrame.room(room, from: try! UserID(validating: "fuzz"), data: data)
            precondition((try? JSONScanner.topLevelMembers(of: Array(encoded.readableBytesView))) != nil, "room frame is not JSON")
        case .join(let room, _, _, _), .leave(let room, _), .presence(let room, _):
            checkRoutingWord(room.rawValue)
        case .ping, .resume:
            break
        }
    case .failure(let error):
        let encoded = ServerFrame.error(error)
        precondition((try? JSONScanner.topLevelMembers(of: Array(encoded.readableBytesView))) != nil, "error frame is not JSON")
    }
    // Token claims: any JSON number an issuer (or an attacker with a key) can write as
    // `exp`, `nbf` or `iat` must give a decision, never a trap.
    if let text = String(validating: bytes, as: UTF8.self), let claim = Double(text) {
        checkClaimTime(claim)
    }
    // The routing-key encoder on arbitrary valid ids.
    if let text = String(validating: bytes, as: UTF8.self), (try? Identifier.validate(text)) != nil {
        checkRoutingWord(text)
    }
}

/// A claim time, against several clocks, gives `expired` or a timer within bounds.
func checkClaimTime(_ claim: Double) {
    for now in [0, 1_700_000_000.5, -1e300, 1e300, claim, claim.nextDown] {
        switch TokenLifetime.decide(expiresAt: claim, now: now) {
        case .expired:
            break
        case .checkAfter(let delay):
            precondition(delay > .zero && delay <= TokenLifetime.longestTimer, "timer out of range: \(delay)")
        }
    }
}

/// A routing word is one word of [A-Za-z0-9_~-] and decodes back to its id.
func checkRoutingWord(_ id: String) {
    let word = RoutingWord.encode(rawID: id)
    precondition(!word.isEmpty && !word.contains(".") && !word.contains("*") && !word.contains("#"), "unsafe word \(word)")
    // Bytes, not `String ==`: canonically equivalent ids are different ids.
    precondition(RoutingWord.decode(word).map { Array($0.utf8) } == Array(id.utf8), "word does not round-trip")
}

#if FUZZING
// libFuzzer's driver and callback have fixed C signatures, hence the pointers here (the
// only ones outside AMQPClient, and only in this test harness).
@_silgen_name("LLVMFuzzerRunDriver")
func runFuzzerDriver(
    _ argc: UnsafeMutablePointer<CInt>,
    _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>,
    _ callback: @convention(c) (UnsafePointer<UInt8>?, Int) -> CInt
) -> CInt

// The callback libFuzzer's own `main` looks for.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    exercise(data.map { Array(UnsafeBufferPointer(start: $0, count: size)) } ?? [])
    return 0
}

// SwiftPM links an executable's entry point under this name; it hands over to libFuzzer.
@_cdecl("SwitchboardFuzz_main")
func fuzzMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
    var argc = argc
    var argv = argv
    return runFuzzerDriver(&argc, &argv) { data, size in fuzzOneInput(data, size) }
}
#else
import Foundation

/// Replays every file in the folders given (default: Tests/Fuzz/regressions).
@main
struct ReplayRegressions {
    static func main() throws {
        let arguments = CommandLine.arguments.dropFirst()
        let folders = arguments.isEmpty ? ["Tests/Fuzz/regressions"] : Array(arguments)
        var count = 0
        for folder in folders {
            for name in try FileManager.default.contentsOfDirectory(atPath: folder).sorted() {
                let data = try Data(contentsOf: URL(fileURLWithPath: folder).appendingPathComponent(name))
                exercise(Array(data))
                count += 1
            }
        }
        print("replayed \(count) inputs without a crash")
    }
}
#endif
