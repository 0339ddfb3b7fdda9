# KVM probe firmware: from the reset vector into 64-bit long mode with
# paging, a 20M-iteration loop, then a write to isa-debug-exit (0xf4).
# The code is linked at ROM offset 0; the ROM is mapped at 0xffff0000.
# Build: as --64 -o probe.o probe.S && ld -e 0 -Ttext=0 --oformat binary -o probe.bin probe.o
# The bytes are embedded in src/vmm/accel.rs (PROBE_CODE); a unit test runs them
# under TCG, so a KVM failure cannot be blamed on this code.
        .set BASE, 0xffff0000
        .text
        .code16
start:
        cli
        lgdtl %cs:gdtr
        movl %cr0, %eax
        orl $1, %eax
        movl %eax, %cr0
        ljmpl $0x08, $(BASE + pm32)
        .code32
pm32:
        movw $0x10, %ax
        movw %ax, %ds
        movw %ax, %es
        movw %ax, %ss
        # Page tables at 0x1000..0x5000: identity-map the first 2 MiB and the
        # top 2 MiB below 4 GiB (where this ROM sits) with 2 MiB pages.
        movl $0x1000, %edi
        movl $0x1000, %ecx
        xorl %eax, %eax
        rep stosl
        movl $0x2003, 0x1000          # PML4[0] -> PDPT
        movl $0x3003, 0x2000          # PDPT[0] -> PD low
        movl $0x4003, 0x2018          # PDPT[3] -> PD high
        movl $0x00000083, 0x3000      # PD low[0]: 0..2 MiB
        movl $0xffe00083, 0x4ff8      # PD high[511]: 4 GiB - 2 MiB
        movl $0x1000, %eax
        movl %eax, %cr3
        movl %cr4, %eax
        orl $0x20, %eax               # PAE
        movl %eax, %cr4
        movl $0xc0000080, %ecx        # EFER
        rdmsr
        orl $0x100, %eax              # LME
        wrmsr
        movl %cr0, %eax
        orl $0x80000000, %eax         # PG
        movl %eax, %cr0
        ljmpl $0x18, $(BASE + lm64)
        .code64
lm64:
        movl $20000000, %ecx
1:      decl %ecx
        jnz 1b
        movb $1, %al
        outb %al, $0xf4
2:      hlt
        jmp 2b
        .p2align 3
gdt:
        .quad 0
        .quad 0x00cf9a000000ffff      # 0x08 32-bit code
        .quad 0x00cf92000000ffff      # 0x10 data
        .quad 0x00af9a000000ffff      # 0x18 64-bit code
gdtr:
        .word gdtr - gdt - 1
        .long BASE + gdt
