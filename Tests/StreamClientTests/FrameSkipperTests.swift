import NIOCore
import Testing

@testable import StreamClient

/// The byte-level cut of oversized frames, without sockets.
@Suite("Frame skipper")
struct FrameSkipperTests {
    /// An unmasked (server) text frame, or a masked one with a zero key.
    static func frame(payload: Int, fill: UInt8 = 0x61, masked: Bool = false) -> [UInt8] {
        var bytes: [UInt8] = [0x81]
        let mask: UInt8 = masked ? 0x80 : 0
        if payload < 126 {
            bytes.append(mask | UInt8(payload))
        } else if payload <= 0xFFFF {
            bytes.append(mask | 126)
            bytes += [UInt8(payload >> 8), UInt8(payload & 0xFF)]
        } else {
            bytes.append(mask | 127)
            bytes += (0..<8).reversed().map { UInt8((payload >> ($0 * 8)) & 0xFF) }
        }
        if masked { bytes += [0, 0, 0, 0] }
        return bytes + Array(repeating: fill, count: payload)
    }

    /// Feeds `input` in chunks of `chunk` bytes; returns what passed and the skipped sizes.
    static func run(_ input: [UInt8], limit: Int, chunk: Int) -> (passed: [UInt8], skipped: [UInt64]) {
        var skipper = FrameSkipper(limit: limit)
        var passed: [UInt8] = []
        var skipped: [UInt64] = []
        var start = 0
        while start < input.count {
            let end = min(start + chunk, input.count)
            for piece in skipper.scan(ByteBuffer(bytes: input[start..<end])) {
                switch piece {
                case .pass(let buffer): passed += buffer.readableBytesView
                case .skipped(let payload): skipped.append(payload)
                }
            }
            start = end
        }
        return (passed, skipped)
    }

    @Test(.timeLimit(.minutes(1)), arguments: [1, 2, 3, 7, 1000, 1 << 20])
    func framesWithinTheLimitPassUnchanged(chunk: Int) {
        let input = Self.frame(payload: 5) + Self.frame(payload: 300) + Self.frame(payload: 70_000) + Self.frame(payload: 0, masked: true)
            + Self.frame(payload: 126, masked: true)
        let (passed, skipped) = Self.run(input, limit: 70_000, chunk: chunk)
        #expect(passed == input)
        #expect(skipped.isEmpty)
    }

    @Test(.timeLimit(.minutes(1)), arguments: [1, 2, 5, 64, 4096, 1 << 20])
    func anOversizedFrameIsCutOutAndTheNextOnesStay(chunk: Int) {
        let before = Self.frame(payload: 10, fill: 0x62)
        let after = Self.frame(payload: 200, fill: 0x63) + Self.frame(payload: 3, fill: 0x64, masked: true)
        let input = before + Self.frame(payload: 100_000) + after + Self.frame(payload: 1001, masked: true) + before
        let (passed, skipped) = Self.run(input, limit: 1000, chunk: chunk)
        #expect(passed == before + after + before)
        #expect(skipped == [100_000, 1001])
    }

    @Test(.timeLimit(.minutes(1)))
    func aSixtyFourBitLengthAboveTheLimitIsSkippedAtOnce() {
        // Only the header arrives: the frame is reported before its payload could be buffered.
        var header: [UInt8] = [0x81, 127]
        header += (0..<8).reversed().map { UInt8(((1 << 40) >> ($0 * 8)) & 0xFF) }
        let (passed, skipped) = Self.run(header + Array(repeating: 0x61, count: 5000), limit: 1 << 24, chunk: 3)
        #expect(passed.isEmpty)
        #expect(skipped == [1 << 40])
    }
}
