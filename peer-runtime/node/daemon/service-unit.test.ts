import { describe, expect, it } from 'vitest'
import { launchdPlist, serviceUnit, systemdQuote, systemdUnit } from './service-unit.js'

const spec = { node: '/opt/node 20/bin/node', cli: '/srv/agentmesh/bin/agentmesh.js', home: '/home/a/100%' }

describe('daemon service units', () => {
  it('quotes systemd words: spaces, quotes, backslashes; % and $ doubled', () => {
    expect(systemdQuote('/usr/bin/node')).toBe('/usr/bin/node')
    expect(systemdQuote('/opt/node 20/node')).toBe('"/opt/node 20/node"')
    expect(systemdQuote('a"b\\c')).toBe('"a\\"b\\\\c"')
    expect(systemdQuote('50%')).toBe('50%%')
    expect(systemdQuote('$HOME')).toBe('"$$HOME"')
  })

  it('writes a systemd user unit with absolute paths', () => {
    const text = systemdUnit(spec)
    expect(text).toContain(
      'ExecStart="/opt/node 20/bin/node" /srv/agentmesh/bin/agentmesh.js daemon up --home /home/a/100%%\n',
    )
    expect(text).toContain('Environment=AGENTMESH_HOME=/home/a/100%%\n')
    expect(text).toContain('KillSignal=SIGTERM\n')
    const u = serviceUnit(spec, 'linux', { HOME: '/home/a' })
    expect(u.path).toBe('/home/a/.config/systemd/user/agentmesh-daemon.service')
    expect(serviceUnit(spec, 'linux', { HOME: '/home/a', XDG_CONFIG_HOME: '/x' }).path).toBe(
      '/x/systemd/user/agentmesh-daemon.service',
    )
  })

  it('writes a launchd agent with escaped strings', () => {
    const text = launchdPlist({ ...spec, home: '/Users/a/<&>' })
    expect(text).toContain('    <string>/opt/node 20/bin/node</string>\n')
    expect(text).toContain('    <string>/Users/a/&lt;&amp;&gt;</string>\n')
    expect(text).toContain('<key>KeepAlive</key>')
    const u = serviceUnit(spec, 'darwin', { HOME: '/Users/a' })
    expect(u.path).toBe('/Users/a/Library/LaunchAgents/dev.agentmesh.daemon.plist')
    expect(u.activate[0]).toContain('launchctl bootstrap gui/')
  })
})
