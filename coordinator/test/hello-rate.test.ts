import { describe, expect, it } from 'vitest'
import { announcedRate } from '../plugins/auth.js'
import { DEFAULT_LIMITS } from '../options.js'
import { worldsPerTest } from '../../test/support/coordinator-world.js'
import { storeLegs } from '../store/testing.js'

describe.each(storeLegs())('hello_ack.limits.rate (%s)', (driver) => {
  const start = worldsPerTest(driver)

  it('announces the member bucket of DESIGN.md §6 to a member and to its session', async () => {
    const world = await start()
    const m = await world.member('m')
    const cp = await world.connectMember(m)
    const member = {
      messageBurst: 200,
      messagesPerSecond: 100,
      byteBurst: 8 * 1024 * 1024,
      bytesPerSecond: 8 * 1024 * 1024,
    }
    expect(cp.helloAck.limits.rate).toEqual({ member })
    const s = await world.connectSession(world.session(m))
    expect(s.helloAck.limits.rate).toEqual({ member })
  })

  it('announces configured limits, rounded down to whole numbers', async () => {
    const world = await start({
      limits: { rate: { messageBurst: 10.7, messagesPerSecond: 2.5, byteBurst: 4096, bytesPerSecond: 1024 } },
    })
    const m = await world.member('m')
    const cp = await world.connectMember(m)
    expect(cp.helloAck.limits.rate?.member).toEqual({
      messageBurst: 10,
      messagesPerSecond: 2,
      byteBurst: 4096,
      bytesPerSecond: 1024,
    })
  })
})

describe('announcedRate', () => {
  it('is the default bucket as configured', () => {
    expect(announcedRate(DEFAULT_LIMITS.rate).rate?.member.messagesPerSecond).toBe(100)
  })

  it('announces nothing for a rate that rounds to zero or is not finite (the field is optional)', () => {
    expect(announcedRate({ ...DEFAULT_LIMITS.rate, messagesPerSecond: 0.5 })).toEqual({})
    expect(announcedRate({ ...DEFAULT_LIMITS.rate, bytesPerSecond: Infinity })).toEqual({})
  })
})
