import Foundation
import NIOCore
import SwitchboardProtocol
import Testing

@Suite("Token lifetimes from any claim value")
struct TokenLifetimeTests {
    @Test("a far-away, huge or non-finite exp never becomes an out-of-range timer")
    func clamped() {
        let now = 1_700_000_000.0
        #expect(TokenLifetime.decide(expiresAt: 1e16, now: now) == .checkAfter(TokenLifetime.longestTimer))
        #expect(TokenLifetime.decide(expiresAt: 1e300, now: now) == .checkAfter(TokenLifetime.longestTimer))
        #expect(TokenLifetime.decide(expiresAt: .greatestFiniteMagnitude, now: 0) == .checkAfter(TokenLifetime.longestTimer))
        #expect(TokenLifetime.decide(expiresAt: .greatestFiniteMagnitude, now: -.greatestFiniteMagnitude) == .expired, "no finite remaining time")
        #expect(TokenLifetime.decide(expiresAt: .infinity, now: now) == .expired)
        #expect(TokenLifetime.decide(expiresAt: .nan, now: now) == .expired)
        #expect(TokenLifetime.decide(expiresAt: now, now: now) == .expired)
        #expect(TokenLifetime.decide(expiresAt: -1e300, now: now) == .expired)
        #expect(TokenLifetime.decide(expiresAt: now + 0.0001, now: now) == .checkAfter(.milliseconds(1)))
        #expect(TokenLifetime.decide(expiresAt: now + 90.25, now: now) == .checkAfter(.milliseconds(90_250)))
    }
}

@Suite("JSON scanner worst cases")
struct JSONScannerWorstCaseTests {
    /// The frame of the review: 64 KiB of distinct short member names.
    static func manyKeys(duplicateAtEnd: Bool) -> [UInt8] {
        var text = #"{"type":"ping""#
        var count = 0
        outer: for first in UInt8(ascii: "a")...UInt8(ascii: "z") {
            for second in UInt8(ascii: "A")...UInt8(ascii: "z") where second <= UInt8(ascii: "Z") || second >= UInt8(ascii: "a") {
                for third in UInt8(ascii: "a")...UInt8(ascii: "z") {
                    let member = #","\#(String(decoding: [first, second, third], as: UTF8.self))":0"#
                    if text.utf8.count + member.utf8.count > 65_000 { break outer }
                    text += member
                    count += 1
                }
            }
        }
        if duplicateAtEnd { text += #","aAa":1"# }
        return Array((text + "}").utf8)
    }

    @Test("the review's 64 KiB frame of 9,000 distinct member names is refused at the member cap, not scanned to the end")
    func manyDistinctKeys() throws {
        #expect(throws: JSONScanError.tooManyMembers) { try JSONScanner.topLevelMembers(of: Self.manyKeys(duplicateAtEnd: false)) }
        let decoded = ClientFrame.decode(ByteBuffer(bytes: Self.manyKeys(duplicateAtEnd: false)))
        guard case .failure(let error) = decoded else {
            Issue.record("decoded: \(decoded)")
            return
        }
        #expect(error.code == .invalidMessage)
    }

    @Test("up to 64 members decode; a duplicate is found whether it is the 3rd member or the 64th (past the linear check)")
    func duplicatesAtEveryCount() throws {
        func frame(_ names: [String]) -> [UInt8] { Array(("{" + names.map { #""\#($0)":0"# }.joined(separator: ",") + "}").utf8) }
        let names = (0..<64).map { "k\($0)" }
        #expect(try JSONScanner.topLevelMembers(of: frame(names)).count == 64)
        #expect(throws: JSONScanError.tooManyMembers) { try JSONScanner.topLevelMembers(of: frame(names + ["k64"])) }
        for count in [2, 3, 8, 9, 10, 40, 63] {
            #expect(throws: JSONScanError.duplicateKey("k0"), "at \(count)") {
                try JSONScanner.topLevelMembers(of: frame(Array(names.prefix(count)) + ["k0"]))
            }
        }
    }

    @Test("member names are compared by bytes: canonically equivalent names are two members")
    func equivalentNamesAreDistinct() throws {
        let members = try JSONScanner.topLevelMembers(of: Array(#"{"\#u{212A}":1,"K":2,"e\#u{301}":3,"\#u{E9}":4}"#.utf8))
        #expect(members.count == 4)
        #expect(throws: JSONScanError.duplicateKey("K")) { try JSONScanner.topLevelMembers(of: Array(#"{"K":1,"\u004B":2}"#.utf8)) }
    }
}
