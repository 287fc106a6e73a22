/**
 * `agentmesh daemon install`: a systemd user unit (Linux) or a launchd agent (macOS) that runs
 * `agentmesh daemon up` for one home. Both pin absolute paths of the Node binary and of the CLI script
 * as they are now, so a service started at login does not depend on the login shell's PATH or a version
 * manager's shims (an upgrade of either means running `install` again).
 */
import { homedir } from 'node:os'
import { join } from 'node:path'

/** What the unit runs. */
export interface ServiceSpec {
  /** Absolute path of the Node binary (`process.execPath`). */
  node: string
  /** Absolute path of the CLI script (`bin/agentmesh.js`, symlinks resolved). */
  cli: string
  /** The home the daemon holds. */
  home: string
}

export type ServicePlatform = 'linux' | 'darwin'

/** The unit's text and where it goes. */
export interface ServiceUnit {
  platform: ServicePlatform
  path: string
  text: string
  /** What to run to load it (printed, never run for the user). */
  activate: string[]
}

const LABEL = 'dev.agentmesh.daemon'
const UNIT = 'agentmesh-daemon.service'

/** The unit for `platform`, placed under `env`'s home and config directories. */
export function serviceUnit(
  spec: ServiceSpec,
  platform: ServicePlatform,
  env: NodeJS.ProcessEnv = process.env,
): ServiceUnit {
  const userHome = env['HOME'] || homedir()
  if (platform === 'linux') {
    const config = env['XDG_CONFIG_HOME'] || join(userHome, '.config')
    return {
      platform,
      path: join(config, 'systemd', 'user', UNIT),
      text: systemdUnit(spec),
      activate: ['systemctl --user daemon-reload', `systemctl --user enable --now ${UNIT}`],
    }
  }
  const path = join(userHome, 'Library', 'LaunchAgents', `${LABEL}.plist`)
  return {
    platform,
    path,
    text: launchdPlist(spec),
    activate: [`launchctl bootstrap gui/$(id -u) ${shellQuote(path)}`],
  }
}

/** A systemd user unit: restarts on failure, stops with SIGTERM (the daemon closes cleanly on it). */
export function systemdUnit(spec: ServiceSpec): string {
  const exec = [spec.node, spec.cli, 'daemon', 'up', '--home', spec.home].map(systemdQuote).join(' ')
  return [
    '[Unit]',
    'Description=agentmesh daemon (holds the meshes of one home)',
    'After=network-online.target',
    'Wants=network-online.target',
    '',
    '[Service]',
    'Type=simple',
    `ExecStart=${exec}`,
    `Environment=${systemdQuote(`AGENTMESH_HOME=${spec.home}`)}`,
    'Restart=on-failure',
    'RestartSec=2',
    'KillSignal=SIGTERM',
    'TimeoutStopSec=30',
    'UMask=0077',
    '',
    '[Install]',
    'WantedBy=default.target',
    '',
  ].join('\n')
}

/** A launchd agent: started at login, kept alive unless it exited cleanly (`daemon down`). */
export function launchdPlist(spec: ServiceSpec): string {
  const args = [spec.node, spec.cli, 'daemon', 'up', '--home', spec.home]
  const log = join(spec.home, 'daemon.log')
  return [
    '<?xml version="1.0" encoding="UTF-8"?>',
    '<!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN" "http://www.apple.com/DTDs/PropertyList-1.0.dtd">',
    '<plist version="1.0">',
    '<dict>',
    '  <key>Label</key>',
    `  <string>${LABEL}</string>`,
    '  <key>ProgramArguments</key>',
    '  <array>',
    ...args.map((a) => `    <string>${xml(a)}</string>`),
    '  </array>',
    '  <key>EnvironmentVariables</key>',
    '  <dict>',
    '    <key>AGENTMESH_HOME</key>',
    `    <string>${xml(spec.home)}</string>`,
    '  </dict>',
    '  <key>RunAtLoad</key>',
    '  <true/>',
    '  <key>KeepAlive</key>',
    '  <dict>',
    '    <key>SuccessfulExit</key>',
    '    <false/>',
    '  </dict>',
    '  <key>Umask</key>',
    '  <integer>63</integer>',
    '  <key>StandardOutPath</key>',
    `  <string>${xml(log)}</string>`,
    '  <key>StandardErrorPath</key>',
    `  <string>${xml(log)}</string>`,
    '</dict>',
    '</plist>',
    '',
  ].join('\n')
}

/** One systemd command-line word: quoted when needed; `%` and `$` doubled (specifiers, variables). */
export function systemdQuote(word: string): string {
  const escaped = word.replace(/%/g, '%%').replace(/\$/g, '$$$$')
  if (/^[A-Za-z0-9_@%+=:,./-]+$/.test(escaped)) return escaped
  return `"${escaped.replace(/\\/g, '\\\\').replace(/"/g, '\\"')}"`
}

function xml(text: string): string {
  return text
    .replace(/&/g, '&amp;')
    .replace(/</g, '&lt;')
    .replace(/>/g, '&gt;')
    .replace(/"/g, '&quot;')
    .replace(/'/g, '&apos;')
}

function shellQuote(text: string): string {
  return /^[\w@%+=:,./-]+$/.test(text) ? text : `'${text.replace(/'/g, `'\\''`)}'`
}
