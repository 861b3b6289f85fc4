// A plain C++ clock loop around a Verilated model, no cocotb: the model's own speed, against
// which the cocotb-driven simulation speed is measured (npusim bench simspeed). Holds reset
// for 10 cycles, then toggles the clock for argv[1] cycles and prints "<cycles> <seconds>".
#include <chrono>
#include <cstdio>
#include <cstdlib>

#include "Vtop.h"
#include "verilated.h"

int main(int argc, char** argv) {
    VerilatedContext context;
    Vtop top{&context};
    const long cycles = argc > 1 ? std::atol(argv[1]) : 100000;
    top.rst = 1;
    for (int i = 0; i < 10; ++i) {
        top.clk = 1; top.eval(); context.timeInc(5);
        top.clk = 0; top.eval(); context.timeInc(5);
    }
    top.rst = 0;
    const auto start = std::chrono::steady_clock::now();
    for (long i = 0; i < cycles; ++i) {
        top.clk = 1; top.eval(); context.timeInc(5);
        top.clk = 0; top.eval(); context.timeInc(5);
    }
    const std::chrono::duration<double> wall = std::chrono::steady_clock::now() - start;
    std::printf("%ld %.6f\n", cycles, wall.count());
    top.final();
    return 0;
}
